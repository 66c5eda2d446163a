"""Arrow rows to Parquet files on the store: conversion (convert), schema fit (schema), partitions,
statistics (stats), whole batches (stage) and streamed files (file_writer). Nothing here commits."""

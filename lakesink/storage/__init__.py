"""Where tables and sources live: locations (uri), options and redaction (options), the object store
(objects) and listing (listing). Local paths need nothing; s3:// URIs take the standard AWS settings."""

"""Write a folder of example NDJSON event files (one per day) for the demo."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path


def main(target: str, days: int = 5, per_day: int = 20_000) -> None:
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    next_id = 0
    for day in range(1, days + 1):
        path = out / f"events-2026-11-{day:02d}.ndjson"
        if path.exists():
            next_id += per_day
            continue  # files are immutable once written: never rewrite an ingested one
        with path.open("w") as f:
            for _ in range(per_day):
                event = {
                    "id": next_id,
                    "day": f"2026-11-{day:02d}",
                    "user": f"user-{rng.randrange(1000)}",
                    "kind": rng.choice(["view", "click", "buy"]),
                    "amount": round(rng.uniform(0, 100), 2),
                }
                f.write(json.dumps(event) + "\n")
                next_id += 1
    print(f"{days} files, {days * per_day} events in {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo/events")

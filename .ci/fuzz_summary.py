"""Count the requests of Schemathesis runs by kind, from their NDJSON reports, and fail
on any 5xx response, whatever the checks made of it.

Usage: python .ci/fuzz_summary.py REPORT.ndjson...
"""

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def scenarios(paths: list[str]) -> list[dict[str, Any]]:
    finished = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            event = json.loads(line)
            if "ScenarioFinished" in event:
                finished.append(event["ScenarioFinished"])
    return finished


def main(paths: list[str]) -> int:
    kinds: Counter[str] = Counter()
    server_errors = []
    for scenario in scenarios(paths):
        recorder = scenario["recorder"]
        for case in recorder.get("cases", {}).values():
            mode = case["value"]["meta"]["generation"]["mode"]
            kinds["stateful" if scenario["phase"] == "stateful" else mode] += 1
        for interaction in recorder.get("interactions", {}).values():
            response = interaction.get("response") or {}
            if response.get("status_code", 0) >= 500:
                request = interaction["request"]
                status = response["status_code"]
                server_errors.append(f"{status} {request['method']} {request['uri']}")
    print(
        f"requests: {kinds['positive']} positive, {kinds['negative']} negative, "
        f"{kinds['stateful']} in stateful (link-following) scenarios; "
        f"{len(server_errors)} answered 5xx"
    )
    for line in server_errors:
        print(f"  {line[:300]}")
    return 1 if server_errors or not kinds else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

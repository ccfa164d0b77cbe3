"""Parses a Prometheus text exposition with the reference Python parser
(prometheus_client), so a malformed line fails here as it would in a scraper.

usage: prometheus_parse.py URL
Prints one JSON object: family name -> {"type": ..., "samples": [[name, labels, value], ...]}.
"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    with urllib.request.urlopen(sys.argv[1], timeout=30) as response:
        text = response.read().decode("utf-8")
    out = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = {
            "type": family.type,
            "samples": [[s.name, s.labels, s.value] for s in family.samples],
        }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

"""Container health check without curl: exit 0 when GET <url> answers 2xx within the timeout.

python docker/healthcheck.py http://127.0.0.1:5000/healthz [timeout_s]
"""

import sys
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else "http://127.0.0.1:5000/healthz"
    timeout = float(argv[2]) if len(argv) > 2 else 5.0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed local URL)
            return 0 if 200 <= resp.status < 300 else 1
    except Exception as exc:  # any failure means unhealthy
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

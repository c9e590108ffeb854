"""Sends a small shop session through a real analytics SDK, as a shop would.

Usage: send.py segment|rudder URL WRITE_KEY USER

Uses the SDK's module-level client with its defaults (a background consumer
thread that batches to POST {URL}/v1/batch; the RudderStack SDK gzips the body),
then flushes. Exits 1, printing every error the SDK reported through `on_error`,
if any upload failed; the SDKs themselves only log failures.
"""

import sys
from datetime import datetime, timedelta, timezone

sdk, url, write_key, user = sys.argv[1:5]

if sdk == "segment":
    import segment.analytics as analytics

    analytics.host = url
elif sdk == "rudder":
    import rudderstack.analytics as analytics

    analytics.dataPlaneUrl = url
else:
    sys.exit(f"unknown SDK {sdk!r}: segment or rudder")

errors = []


def on_error(error, batch):
    errors.append(f"{error!r} ({len(batch)} messages)")


analytics.write_key = write_key
analytics.on_error = on_error
# Fail in seconds, not after the SDKs' minutes of backoff.
analytics.max_retries = 1

# 2023-11-14T22:13:20Z, the tests' T0: fixed, so the profile's times are known.
t0 = datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
shoe = {"product_id": "p1", "category": "shoes", "brand": "acme", "price": 19.99}

analytics.identify(user, {"plan": "pro", "email": f"{user}@example.com"}, timestamp=t0)
analytics.track(user, "Product Viewed", shoe, timestamp=t0 + timedelta(seconds=10))
analytics.track(
    user, "Product Added", dict(shoe, quantity=3), timestamp=t0 + timedelta(seconds=20)
)
order = {
    "order_id": f"{user}-o1",
    "revenue": 59.97,
    "currency": "USD",
    "products": [dict(shoe, quantity=3)],
}
when = t0 + timedelta(seconds=30)
analytics.track(user, "Order Completed", order, timestamp=when, message_id=f"{user}-order")
# A retry of the same message (same messageId): counted once.
analytics.track(user, "Order Completed", order, timestamp=when, message_id=f"{user}-order")
# An anonymous visitor: no userId, only the SDK's anonymousId.
analytics.track(
    event="Product Viewed",
    properties=shoe,
    anonymous_id=f"{user}-anon",
    timestamp=t0 + timedelta(seconds=40),
)

analytics.flush()
if errors:
    print(f"{sdk}: {len(errors)} upload(s) failed:", *errors, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"{sdk}: sent")

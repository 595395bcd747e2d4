"""Example Python function for husk: a JSON transform.

Takes {"items": [{"name": ..., "price": ..., "qty": ...}, ...]} and answers with the
item count, the total (price * qty, rounded to cents) and the names sorted by line value.
"""


def handler(event):
    items = event.get("items", []) if isinstance(event, dict) else []
    lines = [(i["name"], round(i["price"] * i["qty"], 2)) for i in items]
    return {
        "count": len(lines),
        "total": round(sum(v for _, v in lines), 2),
        "by_value": [n for n, _ in sorted(lines, key=lambda x: (-x[1], x[0]))],
    }

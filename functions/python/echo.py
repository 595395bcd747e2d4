"""Example Python function for husk: answers with the event it got.

A JSON payload comes back as JSON (decoded and re-encoded); anything else byte for byte.
"""


def handler(event):
    return event

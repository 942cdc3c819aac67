"""Peer apps: other people's way of doing the app's job, measured in the same runs."""

"""The HTTP gateway: validates requests, routes them to model workers over Redis. No torch here."""

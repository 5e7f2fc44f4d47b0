"""HTTP routes and their request/response schemas."""

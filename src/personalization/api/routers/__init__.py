"""The API's routes, one thin module per path family (parse, call a use case, return JSON)."""

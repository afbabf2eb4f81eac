"""The socket API: listener, peer credentials, middleware, handlers, error mapping."""

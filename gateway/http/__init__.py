"""The HTTP edge: the app factory, typed app keys, routes, handlers, OpenAPI, authentication, rate
limits, middleware, the access log and redaction. Maps serving's errors to problem+json."""

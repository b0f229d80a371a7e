"""The request path, one module a stage in page order: context, filters, features, scorers,
selectors, page."""

"""The request path, one module a stage in page order: context (the request), filters,
features (declared features, the FeatureStore and its kernels; feature_fit fits the store for
training), scorers (the page model), selectors (the page assembly, with layout), page (the Page
and its JSON)."""

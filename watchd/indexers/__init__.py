"""Search indexers: one module per service, each implementing `watchd.indexers.base.Indexer`."""

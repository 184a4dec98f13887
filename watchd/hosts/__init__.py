"""Image hosts: one module per service, each implementing `watchd.hosts.base.Host`."""

"""Gossamer on Kubernetes: injection (`inject`), the admission webhook (`webhook`) and
the install manifests (`manifests`). Contract-tested against the Kubernetes OpenAPI
schemas, not cluster-tested."""

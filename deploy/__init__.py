"""Kubernetes manifests for the gateway (``deploy/``) and the tools that build and check them.

``deploy.kustomize`` renders an overlay without kubectl, ``deploy.rules`` makes the
PrometheusRule from ``docker/prometheus/alerts.yml`` and ``deploy.crds`` holds the vendored
Prometheus Operator schemas. None of it is in the wheel or the image.
"""

"""`nodecompat webhook`: the Kubernetes admission webhook (admission.k8s.io/v1) asking the aggregator.
"""

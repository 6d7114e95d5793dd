"""Admission (admission.k8s.io/v1) core of `nodecompat webhook`: reading AdmissionReviews, deciding, and
the JSONPatch that places a pod on fitting nodes. No grpc, no HTTP here (server/webhook/webhook.py serves it)."""

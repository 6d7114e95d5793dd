"""Translate an image compatibility spec into what Kubernetes places pods with (no grpc here).

- `nfd`: an NFD NodeFeatureRule labelling nodes per compatibility set, one NodeFeatureGroup per set, and
  the nodeAffinity on those labels (nfd.k8s-sigs.io/v1alpha1, NFD's pkg/apis/nfd/nodefeaturerule).
- `dra`: resource.k8s.io/v1 DeviceClass + ResourceClaimTemplate whose CEL selectors use the attribute
  names the vendor DRA drivers publish, sets in weight order as `firstAvailable` alternatives.
- `affinity`: the nodeAffinity block (label form, or `kubernetes.io/hostname In [...]` for named nodes).
"""

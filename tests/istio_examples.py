"""The seed's VirtualService (issue 10: README "From Istio"), shared by the import-istio tests."""

SEED = """\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: search
spec:
  hosts: ["search"]
  http:
  - match:
    - uri:
        prefix: /api/search
    route:
    - destination:
        host: search-v1
    mirror:
      host: search-v2
    mirrorPercentage:
      value: 10.0
  - route:
    - destination:
        host: search-v1
"""

#!/bin/sh
# Mint the webhook's serving certificate and wire it up (openssl only; cert-manager can do the same).
#   ./mint-cert.sh OUTDIR [NAMESPACE]          writes OUTDIR/{ca.crt,ca.key,tls.crt,tls.key,secret.yaml,
#                                              ca-bundle.patch.json} and prints the two kubectl commands
#   ./mint-cert.sh OUTDIR [NAMESPACE] --apply  also runs them (kubectl must reach the cluster)
# The certificate names the Service (nodecompat-webhook.NAMESPACE.svc), which is the name the API server
# verifies; the caBundle patched into both webhook configurations is OUTDIR/ca.crt. Valid 365 days: re-run
# and re-apply to rotate (the webhook reads the files at start; restart the Deployment).
set -eu
out=${1:?usage: mint-cert.sh OUTDIR [NAMESPACE] [--apply]}
ns=${2:-nodecompat}
apply=${3:-}
svc=nodecompat-webhook
mkdir -p "$out"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=nodecompat webhook CA" 2>/dev/null
printf 'subjectAltName=DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
  "$svc" "$ns" "$svc" "$ns" > "$out/leaf.ext"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$out/tls.key" -out "$out/tls.csr" \
  -subj "/CN=$svc.$ns.svc" 2>/dev/null
openssl x509 -req -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial -days 365 \
  -extfile "$out/leaf.ext" -out "$out/tls.crt" 2>/dev/null
rm -f "$out/tls.csr" "$out/leaf.ext"
b64() { base64 < "$1" | tr -d '\n'; }
cat > "$out/secret.yaml" <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: nodecompat-webhook-tls
  namespace: $ns
type: kubernetes.io/tls
data:
  tls.crt: $(b64 "$out/tls.crt")
  tls.key: $(b64 "$out/tls.key")
YAML
printf '[{"op":"add","path":"/webhooks/0/clientConfig/caBundle","value":"%s"}]\n' "$(b64 "$out/ca.crt")" \
  > "$out/ca-bundle.patch.json"
echo "kubectl apply -f $out/secret.yaml"
echo "for kind in mutatingwebhookconfiguration validatingwebhookconfiguration; do kubectl patch \$kind nodecompat --type=json --patch-file $out/ca-bundle.patch.json; done"
if [ "$apply" = "--apply" ]; then
  kubectl apply -f "$out/secret.yaml"
  for kind in mutatingwebhookconfiguration validatingwebhookconfiguration; do
    kubectl patch "$kind" nodecompat --type=json --patch-file "$out/ca-bundle.patch.json"
  done
fi

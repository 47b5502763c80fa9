{{/*
The values this chart adds to the original's 0.0.11. `helm upgrade --reuse-values` from a release of
the original renders with the OLD chart's values.yaml, where none of these exist; every template
fills the missing ones in from here first ("eks-connector.init"). They must equal values.yaml's:
tests/helm.rs renders with the original's values.yaml and with ours and compares.
*/}}
{{- define "eks-connector.defaults" -}}
eks:
  existingSecret: ""
authentication:
  consoleAccess: view
ssmAgent:
  keyAutoRotateDays: 7
  ssmEndpoint: ""
  mgsEndpoint: ""
  extraConfig: {}
egress:
  httpsProxy: ""
  httpsProxySecret: ""
  serviceCIDR: 10.96.0.0/12
  noProxy: ""
  caBundle:
    pem: ""
    configMap: ""
    secret: ""
    key: ca-bundle.pem
proxy:
  readOnly: true
  maxConnections:
  shutdownGrace:
  extraArgs: []
resources:
  installLauncher:
    requests: {cpu: 10m, memory: 8Mi}
    limits: {cpu: 100m, memory: 16Mi}
  init:
    requests: {cpu: 50m, memory: 8Mi}
    limits: {cpu: "1", memory: 32Mi}
  agent:
    requests: {cpu: 50m, memory: 64Mi}
    limits: {cpu: "1", memory: 256Mi}
  keysync:
    requests: {cpu: 10m, memory: 8Mi}
    limits: {cpu: 200m, memory: 32Mi}
  proxy:
    requests: {cpu: 20m, memory: 16Mi}
    limits: {cpu: "1", memory: 64Mi}
fullnameOverride: ""
imagePullSecrets: []
podAnnotations: {}
podLabels: {}
priorityClassName: ""
nodeSelector: {}
affinity: {}
tolerations:
  - key: CriticalAddonsOnly
    operator: Exists
  - key: node-role.kubernetes.io/master
    effect: NoSchedule
  - key: node-role.kubernetes.io/control-plane
    effect: NoSchedule
terminationGracePeriodSeconds: 30
podDisruptionBudget:
  enabled: true
networkPolicy:
  enabled: true
metrics:
  enabled: false
  annotationPort: ""
  scrapers: []
  podMonitor:
    enabled: false
    interval: 30s
    labels: {}
  prometheusRule:
    enabled: false
    labels: {}
admissionPolicy:
  enabled: true
{{- end -}}

{{/* Sets each key of .src that .dst lacks, recursing into maps both have. */}}
{{- define "eks-connector.fill" -}}
{{- $dst := .dst -}}
{{- range $k, $d := .src -}}
{{- if not (hasKey $dst $k) -}}
{{- $_ := set $dst $k $d -}}
{{- else if and (kindIs "map" $d) (kindIs "map" (get $dst $k)) -}}
{{- include "eks-connector.fill" (dict "dst" (get $dst $k) "src" $d) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* First line of every template: missing values filled in, then checked. */}}
{{- define "eks-connector.init" -}}
{{- include "eks-connector.fill" (dict "dst" .Values "src" (include "eks-connector.defaults" . | fromYaml)) -}}
{{- include "eks-connector.validate" . -}}
{{- end -}}

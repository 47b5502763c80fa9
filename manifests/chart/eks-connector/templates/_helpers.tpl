{{/* Every object's base name: eks-connector as in the original, or fullnameOverride. */}}
{{- define "eks-connector.fullname" -}}
{{- .Values.fullnameOverride | default "eks-connector" | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "eks-connector.labels" -}}
app.kubernetes.io/name: eks-connector
app.kubernetes.io/part-of: eks-connector
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The StatefulSet's selector: immutable, and the original's (app: eks-connector) so upgrades work. */}}
{{- define "eks-connector.selector" -}}
app: {{ include "eks-connector.fullname" . }}
{{- end -}}

{{- define "eks-connector.secretNamespace" -}}
{{- .Values.secretOverrides.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "eks-connector.statePrefix" -}}
{{- .Values.secretOverrides.prefix | default "eks-connector-state" -}}
{{- end -}}

{{- define "eks-connector.activationSecret" -}}
{{- .Values.eks.existingSecret | default (printf "%s-activation" (include "eks-connector.fullname" .)) -}}
{{- end -}}

{{/*
Egress for init and the SSM agent (values egress.*), as manifests/components/egress-proxy/ and its
private-ca component set it: the Secret holding HTTPS_PROXY ("" without a proxy), the CA bundle's
volume source ("" without one), and the env entries of one container (agent: the SSM agent,
which also reads the lower-case proxy names and, for Go's own TLS, SSL_CERT_FILE).
*/}}
{{- define "eks-connector.egressProxySecret" -}}
{{- $e := .Values.egress -}}
{{- if $e.httpsProxySecret -}}
{{- $e.httpsProxySecret -}}
{{- else if $e.httpsProxy -}}
{{- printf "%s-egress-proxy" (include "eks-connector.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "eks-connector.caBundleSource" -}}
{{- $ca := .Values.egress.caBundle -}}
{{- $items := list (dict "key" (ternary "ca-bundle.pem" $ca.key (not (empty $ca.pem))) "path" "ca-bundle.pem") -}}
{{- if $ca.pem -}}
{{- dict "configMap" (dict "name" (printf "%s-ca-bundle" (include "eks-connector.fullname" .)) "items" $items) | toYaml -}}
{{- else if $ca.configMap -}}
{{- dict "configMap" (dict "name" $ca.configMap "items" $items) | toYaml -}}
{{- else if $ca.secret -}}
{{- dict "secret" (dict "secretName" $ca.secret "items" $items) | toYaml -}}
{{- end -}}
{{- end -}}

{{- define "eks-connector.egressEnv" -}}
{{- $root := .ctx -}}
{{- $e := $root.Values.egress -}}
{{- $secret := include "eks-connector.egressProxySecret" $root -}}
{{- $names := ternary (list "HTTPS_PROXY" "https_proxy") (list "HTTPS_PROXY") .agent -}}
{{- if $secret }}
{{- range $names }}
- name: {{ . }}
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: HTTPS_PROXY}
{{- end }}
- name: NO_PROXY
  value: {{ printf "$(KUBERNETES_SERVICE_HOST),%s,localhost,127.0.0.1,::1,.svc,.cluster.local,%s" $e.serviceCIDR $e.noProxy | quote }}
{{- if .agent }}
- name: no_proxy
  value: "$(NO_PROXY)"
{{- end }}
{{- end }}
{{- if include "eks-connector.caBundleSource" $root }}
- name: AWS_CA_BUNDLE
  value: /etc/eks-connector/ca/ca-bundle.pem
{{- if .agent }}
- name: SSL_CERT_FILE
  value: /etc/eks-connector/ca/ca-bundle.pem
{{- end }}
{{- end }}
{{- end -}}

{{- define "eks-connector.image" -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}

{{/*
Refuses values that would install something broken, naming the value. Included by every template
that depends on them, so `helm template -s` of any one file checks too.
*/}}
{{- define "eks-connector.validate" -}}
{{- $eks := .Values.eks | default dict -}}
{{- if not $eks.existingSecret -}}
{{- if not $eks.activationCode -}}
{{- fail "eks.activationCode must be set: the activation code AWS gave you (--set eks.activationCode=...), or name a Secret holding EKS_ACTIVATION_CODE in eks.existingSecret" -}}
{{- end -}}
{{- if not $eks.activationId -}}
{{- fail "eks.activationId must be set: the activation id AWS gave you (--set eks.activationId=...), or name a Secret holding EKS_ACTIVATION_ID in eks.existingSecret" -}}
{{- end -}}
{{- if not $eks.agentRegion -}}
{{- fail "eks.agentRegion must be set: the AWS region of the activation, e.g. --set eks.agentRegion=us-west-2" -}}
{{- end -}}
{{- end -}}
{{- if and $eks.activationId (not (regexMatch "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$" (toString $eks.activationId))) -}}
{{- fail (printf "eks.activationId %q is not an SSM activation id (a UUID such as 2f1a6c2e-0000-4c3b-9a55-3f6b1d9e0a7c); did you swap it with the code?" (toString $eks.activationId)) -}}
{{- end -}}
{{- if and $eks.agentRegion (not (regexMatch "^[a-z]{2}(-[a-z]+)+-[0-9]+$" (toString $eks.agentRegion))) -}}
{{- fail (printf "eks.agentRegion %q is not an AWS region name (e.g. us-west-2)" (toString $eks.agentRegion)) -}}
{{- end -}}
{{- $replicas := .Values.replicaCount -}}
{{- if not (or (kindIs "float64" $replicas) (kindIs "int64" $replicas) (kindIs "int" $replicas)) -}}
{{- fail (printf "replicaCount must be a whole number of at least 1, got %v" $replicas) -}}
{{- end -}}
{{- if or (lt (float64 $replicas) 1.0) (ne (float64 (int64 $replicas)) (float64 $replicas)) -}}
{{- fail (printf "replicaCount must be a whole number of at least 1, got %v" $replicas) -}}
{{- end -}}
{{- $e := .Values.egress | default dict -}}
{{- if and $e.httpsProxy $e.httpsProxySecret -}}
{{- fail "egress.httpsProxy and egress.httpsProxySecret are both set: set one (the Secret keeps credentials out of Helm's values)" -}}
{{- end -}}
{{- if and $e.httpsProxy (not (regexMatch "^https?://[^/[:space:]]+/?$" (toString $e.httpsProxy))) -}}
{{- fail "egress.httpsProxy must be the proxy's URL, http://[user:password@]host:port (value not shown: it may hold credentials)" -}}
{{- end -}}
{{- if and (or $e.httpsProxy $e.httpsProxySecret) (not (regexMatch "^[0-9a-fA-F.:]+/[0-9]+(,[0-9a-fA-F.:]+/[0-9]+)*$" (toString $e.serviceCIDR))) -}}
{{- fail (printf "egress.serviceCIDR %q is not the cluster's service range (a CIDR such as 10.96.0.0/12; the API server's --service-cluster-ip-range)" (toString $e.serviceCIDR)) -}}
{{- end -}}
{{- $ca := $e.caBundle | default dict -}}
{{- if gt (len (compact (list $ca.pem $ca.configMap $ca.secret))) 1 -}}
{{- fail "egress.caBundle: set only one of pem, configMap, secret" -}}
{{- end -}}
{{- if and $ca.pem (not (contains "-----BEGIN CERTIFICATE-----" (toString $ca.pem))) -}}
{{- fail "egress.caBundle.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----); --set-file egress.caBundle.pem=ca-bundle.pem" -}}
{{- end -}}
{{- $auth := .Values.authentication | default dict -}}
{{- if and $auth.allowedUserARNs (not (kindIs "slice" $auth.allowedUserARNs)) -}}
{{- fail "authentication.allowedUserARNs must be a list of IAM ARNs, e.g. --set 'authentication.allowedUserARNs={arn:aws:iam::111122223333:role/Viewer}'" -}}
{{- end -}}
{{- $metrics := .Values.metrics | default dict -}}
{{- if and $metrics.annotationPort (not (has (toString $metrics.annotationPort) (list "8081" "8082" "8083"))) -}}
{{- fail (printf "metrics.annotationPort must be 8081 (connector-proxy), 8082 (connector-agent) or 8083 (connector-keysync), or empty for all three; got %v" $metrics.annotationPort) -}}
{{- end -}}
{{- if and $metrics.scrapers (not (kindIs "slice" $metrics.scrapers)) -}}
{{- fail "metrics.scrapers must be a list of NetworkPolicy peers, e.g. [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]" -}}
{{- end -}}
{{- range $name := list "podMonitor" "prometheusRule" -}}
{{- $labels := (get $metrics $name | default dict).labels -}}
{{- if $labels -}}
{{- $bad := not (kindIs "map" $labels) -}}
{{- if not $bad -}}
{{- range $k, $v := $labels -}}
{{- if not (kindIs "string" $v) -}}{{- $bad = true -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if $bad -}}
{{- fail (printf "metrics.%s.labels must map label names to strings, e.g. {release: kube-prometheus-stack} (--set-string for a number)" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $arn := $auth.allowedUserARNs -}}
{{- if not (regexMatch "^arn:aws[a-z-]*:(iam|sts)::[0-9]{12}:(user|role|assumed-role)/[^[:space:]]+$" (toString $arn)) -}}
{{- fail (printf "authentication.allowedUserARNs: %q is not an IAM user, role or assumed-role ARN (arn:aws:iam::ACCOUNT:role/NAME, arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION)" (toString $arn)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether something scrapes the health ports (the NetworkPolicy then admits it to them). */}}
{{- define "eks-connector.scraped" -}}
{{- if or .Values.metrics.enabled .Values.metrics.podMonitor.enabled -}}true{{- end -}}
{{- end -}}

{{/* The three health ports by name, each serving /metrics: proxy, launcher, key sync. */}}
{{- define "eks-connector.healthPorts" -}}
proxy-health agent-health keysync-health
{{- end -}}

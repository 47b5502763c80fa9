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

{{/* The release's base name: fullnameOverride, else the release name with the chart name (or
nameOverride) unless it already holds it. */}}
{{- define "postcache.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "postcache.operatorName" -}}
{{- printf "%s-operator" (include "postcache.fullname" .) -}}
{{- end -}}

{{- define "postcache.serviceAccountName" -}}
{{- default (include "postcache.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "postcache.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The port of operator.metricsAddr (host:port). */}}
{{- define "postcache.metricsPort" -}}
{{- splitList ":" .Values.operator.metricsAddr | last -}}
{{- end -}}

{{- define "postcache.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "postcache.labels" -}}
{{ include "postcache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
What the operator may do to the objects it reconciles: exactly the verbs it uses (the end-to-end
test compares them with the apiserver's audit log), nothing on kinds it does not manage. Children
are written by server-side apply (`patch`, and `create` for the apply that creates one), read by
name (`get`), listed and deleted when no longer desired (pruning); only the kinds it owns and
reacts to are watched.
A ClusterRole when it watches every namespace, a Role otherwise.
*/}}
{{- define "postcache.reconcileRules" -}}
- apiGroups: [postcache.io]
  resources: [postcaches]
  verbs: [list, watch]
- apiGroups: [postcache.io]
  resources: [postcaches/status]
  verbs: [patch]
# Setting blockOwnerDeletion on children, where OwnerReferencesPermissionEnforcement is on.
- apiGroups: [postcache.io]
  resources: [postcaches/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [services, configmaps, serviceaccounts]
  verbs: [get, list, create, patch, delete]
# Generated credentials: read by name, created once by server-side apply, never listed or pruned.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
- apiGroups: [apps]
  resources: [statefulsets, deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors, prometheusrules]
  verbs: [get, list, create, patch, delete]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

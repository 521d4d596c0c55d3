{{/* The chart name, overridable. */}}
{{- define "docpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "docpipe.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "docpipe.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "docpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" . "component" "operator"). */}}
{{- define "docpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "docpipe.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "docpipe.operatorName" -}}
{{- printf "%s-operator" (include "docpipe.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "docpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "docpipe.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: call with (dict "root" . "image" .Values.images.worker). */}}
{{- define "docpipe.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The namespaces a namespaced operator watches. */}}
{{- define "docpipe.watchNamespaces" -}}
{{- $namespaces := .Values.rbac.watchNamespaces | default (list .Release.Namespace) -}}
{{- join "," $namespaces -}}
{{- end -}}

{{/* The namespaces whose Secrets the operator may read (rbac.secrets.access namespaces): the
listed ones, else the watched ones (namespaced scope) or the release namespace. */}}
{{- define "docpipe.secretNamespaces" -}}
{{- $namespaces := .Values.rbac.secrets.namespaces -}}
{{- if not $namespaces -}}
{{- $namespaces = eq .Values.rbac.scope "namespaced" | ternary (splitList "," (include "docpipe.watchNamespaces" .)) (list .Release.Namespace) -}}
{{- end -}}
{{- join "," $namespaces -}}
{{- end -}}

{{/* The pod and container security settings every docpipe pod runs with (restricted PSS). */}}
{{- define "docpipe.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "docpipe.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "docpipe.mocksUrl" -}}
{{- printf "http://%s-mocks.%s.svc:%d" (include "docpipe.fullname" .) .Release.Namespace (int .Values.mocks.port) -}}
{{- end -}}

{{- /* The OTEL_* variables of a pod that traces (tracing.endpoint set); empty otherwise. */}}
{{- define "docpipe.tracingEnv" -}}
{{- with .Values.tracing.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $.Values.tracing.sampleRatio | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.namespace.name=%s" $.Release.Namespace | quote }}
{{- end }}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "nodus.labels" -}}
app.kubernetes.io/name: nodus
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component. */}}
{{- define "nodus.selector" -}}
app.kubernetes.io/name: nodus
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The image reference. */}}
{{- define "nodus.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The controller's in-cluster gRPC address. */}}
{{- define "nodus.controllerAddress" -}}
http://nodus-controller.{{ .Release.Namespace }}.svc:{{ .Values.controller.grpcPort }}
{{- end -}}

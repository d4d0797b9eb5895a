{{/* Labels every cstor object carries; `component` names the part. */}}
{{- define "cstor.labels" -}}
app.kubernetes.io/name: cstor
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: cstor
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels (immutable once a workload exists: keep them few). */}}
{{- define "cstor.selector" -}}
app.kubernetes.io/name: cstor
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cstor.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* Socket path kubelet uses for the node plugin. */}}
{{- define "cstor.pluginDir" -}}
{{ .Values.node.kubeletDir }}/plugins/{{ .Values.driverName }}
{{- end -}}

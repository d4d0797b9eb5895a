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

{{/* A listen address on the IP in env variable `var`: $(VAR):PORT, or
[$(VAR)]:PORT on IPv6 (Kubernetes expands the variable). */}}
{{- define "cstor.listen" -}}
{{- if eq .root.Values.ipFamily "IPv6" -}}
[$({{ .var }})]:{{ .port }}
{{- else -}}
$({{ .var }}):{{ .port }}
{{- end -}}
{{- end -}}

{{/* The TLS arguments of a cstor process: its certificate's directory, or
plaintext when the operator chose it. */}}
{{- define "cstor.tlsArgs" -}}
{{- if .Values.insecurePlaintext -}}
- --insecure-plaintext
{{- else -}}
- --tls-dir=/etc/cstor/tls
{{- end -}}
{{- end -}}

{{/* The volume and mount of a TLS Secret (`secret`) at /etc/cstor/tls. */}}
{{- define "cstor.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ .secret }}
    defaultMode: 0400
{{- end -}}

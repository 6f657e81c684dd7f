{{/* Names and labels shared by the templates. */}}

{{- define "serin.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "serin.fullname" -}}
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

{{- define "serin.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: serin
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "serin.selectorLabels" -}}
app.kubernetes.io/name: {{ include "serin.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "serin.loadtester.selectorLabels" -}}
app.kubernetes.io/name: {{ include "serin.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: loadtester
{{- end -}}

{{- define "serin.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "serin.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: set the name of an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "serin.loadtester.fullname" -}}
{{- printf "%s-loadtester" (include "serin.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "serin.loadtester.serviceAccountName" -}}
{{- if .Values.loadtester.serviceAccount.create -}}
{{- default (include "serin.loadtester.fullname" .) .Values.loadtester.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.loadtester.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "serin.loadtester.namespace" -}}
{{- default .Release.Namespace .Values.loadtester.namespace -}}
{{- end -}}

{{- define "serin.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace -}}
{{- end -}}

{{- define "serin.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "serin.loadtester.image" -}}
{{- $repo := default .Values.image.repository .Values.loadtester.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.loadtester.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

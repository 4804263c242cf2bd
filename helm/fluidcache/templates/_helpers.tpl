{{/* Names and labels */}}
{{- define "fluidcache.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fluidcache.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fluidcache.labels" -}}
app.kubernetes.io/name: {{ include "fluidcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "fluidcache.selector" -}}
app.kubernetes.io/name: {{ include "fluidcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fluidcache.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "fluidcache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "fluidcache.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{- define "fluidcache.authSecret" -}}
{{ .Values.ray.auth.existingSecret | default (printf "%s-ray-auth" (include "fluidcache.fullname" .)) }}
{{- end -}}

{{- define "fluidcache.credentialsSecret" -}}
{{- if .Values.credentials.existingSecret -}}
{{ .Values.credentials.existingSecret }}
{{- else if .Values.credentials.create -}}
{{ printf "%s-credentials" (include "fluidcache.fullname" .) }}
{{- end -}}
{{- end -}}

{{- define "fluidcache.tokenSecret" -}}
{{ .Values.token.existingSecret | default (printf "%s-token" (include "fluidcache.fullname" .)) }}
{{- end -}}

{{/* The head's service name: workers and clients reach Ray and the master there */}}
{{- define "fluidcache.headService" -}}
{{ printf "%s-head" (include "fluidcache.fullname" .) }}
{{- end -}}

{{/* The master endpoint for a client in another pod (the head Service) */}}
{{- define "fluidcache.masterAddress" -}}
{{ printf "%s.%s.svc:%v" (include "fluidcache.headService" .) .Release.Namespace .Values.master.port }}
{{- end -}}

{{/* Environment shared by every fluidcache container */}}
{{- define "fluidcache.env" -}}
- name: FLUIDCACHE_HOME
  value: /var/lib/fluidcache/home
- name: FLUIDCACHE_MACHINE_ID
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- name: FLUIDCACHE_TOKEN
  valueFrom: {secretKeyRef: {name: {{ include "fluidcache.tokenSecret" . }}, key: token}}
{{- if .Values.ray.auth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom: {secretKeyRef: {name: {{ include "fluidcache.authSecret" . }}, key: auth_token}}
{{- end }}
{{- end -}}

{{/* Tier volumes of a worker pod, from tieredstore.levels */}}
{{- define "fluidcache.tierVolumes" -}}
{{- range $i, $l := .Values.tieredstore.levels }}
{{- if and $.Values.shortCircuit.enabled (ne $l.volumeType "hostPath") }}
{{- fail (printf "shortCircuit.enabled needs every tier on a hostPath (app pods mount the same directories); tieredstore.levels[%d] is %s" $i $l.volumeType) }}
{{- end }}
- name: tier-{{ $i }}
{{- if eq $l.volumeType "hostPath" }}
  hostPath:
    path: {{ required "tieredstore.levels[].hostPath.path is required for volumeType hostPath" $l.hostPath.path }}
    type: DirectoryOrCreate
{{- else if eq $l.volumeType "emptyDir" }}
  emptyDir:
{{- if eq (upper $l.mediumtype) "MEM" }}
    medium: Memory
{{- end }}
    sizeLimit: {{ $l.quota | replace "iB" "i" | replace "B" "" | quote }}
{{- else }}
{{- fail (printf "tieredstore.levels[%d].volumeType must be emptyDir or hostPath, not %q" $i $l.volumeType) }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "fluidcache.tierMounts" -}}
{{- range $i, $l := .Values.tieredstore.levels }}
- name: tier-{{ $i }}
  mountPath: {{ $l.path }}
{{- end }}
{{- end -}}

{{- define "fluidcache.probe" -}}
exec:
  command: {{ toJson .command }}
initialDelaySeconds: {{ .probes.initialDelaySeconds }}
periodSeconds: {{ .probes.periodSeconds }}
timeoutSeconds: {{ .probes.timeoutSeconds }}
failureThreshold: {{ .probes.failureThreshold }}
{{- end -}}

{{/* A cache worker's preStop hook (worker.drainOnStop): `fluidcache drain` this pod's
     worker (the host name `fluidcache status` shows for it is the pod's name) and wait
     until its blocks have moved to their new owners and it is retired. Bounded twice:
     the drain's own --timeout, then `timeout` ends the CLI. Whatever the drain answers,
     the pod then stops (Kubernetes only records a failed hook as an event). The CLI finds
     the master at the head Service, as the FUSE pods do, with the pod's FLUIDCACHE_TOKEN
     (the `default` namespace's); the worker's own environment is left as it was. */}}
{{- define "fluidcache.drainHook" -}}
{{- $t := int .Values.worker.drainTimeoutSeconds }}
{{- $grace := int .Values.worker.terminationGracePeriodSeconds }}
{{- if lt $t 1 }}
{{- fail (printf "worker.drainTimeoutSeconds must be a positive number of seconds, not %v" .Values.worker.drainTimeoutSeconds) }}
{{- end }}
{{- if lt $grace (add $t 30) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) must be at least worker.drainTimeoutSeconds + 30 (%d): the preStop drain runs inside the grace period, and the worker needs time to stop after it (or set worker.drainOnStop: false)" $grace (add $t 30)) }}
{{- end -}}
preStop:
  exec:
    command:
      - sh
      - -c
      - >-
        export FLUIDCACHE_MASTER={{ include "fluidcache.masterAddress" . }};
        exec timeout -k 5 {{ add $t 10 }}
        fluidcache drain "${HOSTNAME:-$(cat /proc/sys/kernel/hostname)}" --wait --timeout {{ $t }}
{{- end -}}

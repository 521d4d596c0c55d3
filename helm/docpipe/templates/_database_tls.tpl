{{/* TLS to Postgres: the CA Secret (databaseTls.caSecretRef) mounted where DATABASE_URL's
sslrootcert points. Include only when databaseTls.caSecretRef.name is set. */}}
{{- define "docpipe.databaseTlsVolumeMount" -}}
- name: postgres-ca
  mountPath: {{ .Values.databaseTls.mountPath }}
  readOnly: true
{{- end -}}

{{- define "docpipe.databaseTlsVolume" -}}
- name: postgres-ca
  secret:
    secretName: {{ .Values.databaseTls.caSecretRef.name }}
    items:
      - key: {{ .Values.databaseTls.caSecretRef.key }}
        path: {{ .Values.databaseTls.caSecretRef.key }}
{{- end -}}

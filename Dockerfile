FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY webhook ./webhook
RUN pip install --no-cache-dir -c constraints.txt '.[server,submit]' \
    && useradd --system --uid 10001 vod
USER vod

ENV VOD_WEBHOOK_LOG_FORMAT=json
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["vod-webhook"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

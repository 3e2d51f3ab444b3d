# Image for docker-compose.yml: the project installed in a virtualenv, CPU torch from PyPI.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN python -m pip install --no-cache-dir -e . && mkdir -p /var/lib/lookalike
ENV PYTHONUNBUFFERED=1
EXPOSE 8000 8001
CMD ["lookalike", "api"]

# One image for every cardflow process; the compose command picks the role
# (a worker of one task queue, the codec server, migrations).
# The base image is pinned to an exact release, like every image of the stack.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system cardflow \
    && useradd --system --gid cardflow --create-home --home-dir /home/cardflow cardflow

WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY workflows/ workflows/
COPY activities/ activities/
COPY workers/ workers/
COPY starters/ starters/
COPY simulators/ simulators/
COPY bench/ bench/
RUN pip install --no-cache-dir .

# Anything cardflow writes at run time goes under the non-root user's home,
# never into the installed code.
ENV CARDFLOW_HOME=/home/cardflow/.cardflow
USER cardflow
WORKDIR /home/cardflow

CMD ["cardflow", "--help"]

"""A service replica's load, read on its own host (autoscale ``http`` and ``command`` metrics).

Standard library only, Python 3.6+ (the runner's rules). ``parse`` is also the package's (the
``prometheus`` source and the tests use it)."""

import json
import os
import re
import subprocess

from .files import read_job
from .supervisor import base_environment, workdir_of

SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


class MetricError(Exception):
    pass


def _number(text, what):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise MetricError("%s is not a number: %r" % (what, str(text)[:80])) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise MetricError("%s is not a finite number: %r" % (what, text))
    return value


def parse(body, fmt="number", field=None, name=None, labels=None):
    """The number in a metric endpoint's answer: plain text, JSON at a dotted ``field``, or the sum
    of the Prometheus samples named ``name`` whose labels include ``labels``."""
    if fmt == "number":
        return _number(body.strip(), "the answer")
    if fmt == "json":
        try:
            value = json.loads(body)
        except ValueError as e:
            raise MetricError("the answer is not JSON: %s" % e) from None
        for key in (field or "").split("."):
            if isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            elif isinstance(value, dict) and key in value:
                value = value[key]
            else:
                raise MetricError("the JSON answer has no %r (looking for %s)" % (key, field))
        if isinstance(value, bool):
            raise MetricError("%s is true/false, not a number" % field)
        return _number(value, field)
    if fmt == "prometheus":
        total, found = 0.0, False
        for line in body.splitlines():
            m = SAMPLE.match(line.strip())
            if not m or m.group(1) != name:
                continue
            have = dict(LABEL.findall(m.group(2) or ""))
            if any(have.get(k) != v for k, v in (labels or {}).items()):
                continue
            total += _number(m.group(3), name)
            found = True
        if not found:
            want = "%s%s" % (
                name,
                "{%s}" % ",".join('%s="%s"' % kv for kv in sorted((labels or {}).items())) if labels else "",
            )
            raise MetricError("no sample %s in the answer" % want)
        return total
    raise MetricError("unknown format %r" % fmt)


def read_http(port, metric, timeout):
    import urllib.error
    import urllib.request

    url = "http://127.0.0.1:%d%s" % (int(port), metric["path"])
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        raise MetricError("GET %s answered %d" % (metric["path"], e.code)) from None
    except Exception as e:  # refused, timed out, reset
        raise MetricError("GET %s failed: %s" % (metric["path"], getattr(e, "reason", e))) from None
    return parse(body, metric.get("format") or "number", metric.get("field"), metric.get("name"), metric.get("labels"))


def read_command(run_dir, job, command, timeout):
    argv = list(command) if isinstance(command, list) else ["/bin/sh", "-c", command]
    try:
        done = subprocess.run(
            argv,
            cwd=workdir_of(job, run_dir),
            env=base_environment(job, run_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise MetricError("the metric command timed out after %ss" % timeout) from None
    except OSError as e:
        raise MetricError("the metric command could not start: %s" % e) from None
    if done.returncode != 0:
        err = (done.stderr or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise MetricError("the metric command exited %d %s" % (done.returncode, err[0][:200]))
    lines = (done.stdout or b"").decode("utf-8", "replace").strip().splitlines()
    return _number(lines[-1] if lines else "", "the metric command's last line")


def metric(spec_json, run_dirs):
    """Each replica's load: {run_dir, value} or {run_dir, error}."""
    spec = json.loads(spec_json)
    timeout = float(spec.get("timeout") or 5)
    out = []
    for run_dir in run_dirs:
        row = {"run_dir": os.path.abspath(run_dir)}
        try:
            job = read_job(run_dir)
            if spec["source"] == "http":
                port = spec.get("port") or (job.get("env") or {}).get("PORT")
                if not port:
                    raise MetricError("no port for the metric: set autoscale.metric.port or the service's port")
                row["value"] = read_http(port, spec, timeout)
            else:
                row["value"] = read_command(row["run_dir"], job, spec["command"], timeout)
        except MetricError as e:
            row["error"] = str(e)
        except (OSError, ValueError) as e:
            row["error"] = "cannot read the replica: %s" % e
        out.append(row)
    return out

"""The Prometheus files of deploy/ and the system set-up step.

promtool (Debian's prometheus package) is the reference: it validates the
scrape config and the alert rules and runs the rules' unit tests
(deploy/alerts_test.yml). Broken copies of the rules must fail those unit
tests, so they check each alert's threshold, window, `for` and labels.
scripts/install_system_packages.sh runs against stub apt-get and sudo.
"""

import os
import shutil
import subprocess

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, 'deploy')
INSTALL = os.path.join(ROOT, 'scripts', 'install_system_packages.sh')
SETUP_HINT = ('run the system set-up step first: '
              'scripts/install_system_packages.sh')
ALERTS = {'DetectorHighErrorRate', 'DetectorHighLatencyP99',
          'DetectorInputDrift', 'DetectorCanaryFailing', 'DetectorTargetDown'}


def promtool(*args, cwd=DEPLOY):
  """Runs promtool; fails (not skips) the test where it is not installed."""
  if shutil.which('promtool') is None:
    pytest.fail(f'promtool is not on PATH: {SETUP_HINT}')
  return subprocess.run(['promtool', *args], cwd=cwd, capture_output=True,
                        text=True, timeout=60)


def load(name):
  with open(os.path.join(DEPLOY, name)) as f:
    return yaml.safe_load(f)


def test_prometheus_config_is_valid_and_scrapes_the_service():
  proc = promtool('check', 'config', 'prometheus.yml')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'SUCCESS' in proc.stdout
  config = load('prometheus.yml')
  assert config['rule_files'] == ['alerts.yml']
  [job] = config['scrape_configs']
  assert job['job_name'] == 'detector'
  assert job['metrics_path'] == '/metrics'
  assert job['scrape_interval'] == '15s'
  assert job['static_configs'] == [{'targets': ['127.0.0.1:8000']}]


def test_alert_rules_are_valid():
  proc = promtool('check', 'rules', 'alerts.yml')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert f'SUCCESS: {len(ALERTS)} rules found' in proc.stdout


def test_alert_rules_pass_their_unit_tests():
  proc = promtool('test', 'rules', 'alerts_test.yml')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'SUCCESS' in proc.stdout
  assert 'FAILED' not in proc.stdout


def test_every_alert_is_labelled_and_tested_both_ways():
  rules = [r for g in load('alerts.yml')['groups'] for r in g['rules']]
  assert {r['alert'] for r in rules} == ALERTS
  for rule in rules:
    assert rule['labels']['severity'] in ('critical', 'warning'), rule
    assert rule['annotations']['summary'], rule
    assert rule['annotations']['description'], rule
  fired, quiet = set(), set()
  for case in load('alerts_test.yml')['tests']:
    for check in case['alert_rule_test']:
      (fired if check['exp_alerts'] else quiet).add(check['alertname'])
  assert fired == ALERTS
  assert quiet == ALERTS


# (alert, text in alerts.yml, replacement): each breaks one part of a rule
# that a case of alerts_test.yml must notice.
MUTATIONS = [
    ('DetectorHighErrorRate', '> 0.05', '> 0.005'),
    ('DetectorHighErrorRate', 'status=~"5.."', 'status=~"[45].."'),
    ('DetectorHighErrorRate', 'for: 5m', 'for: 1m'),
    ('DetectorHighLatencyP99', 'histogram_quantile(0.99,',
     'histogram_quantile(0.95,'),
    ('DetectorHighLatencyP99', '{stage="total"}', ''),
    ('DetectorHighLatencyP99', 'for: 10m', 'for: 5m'),
    ('DetectorInputDrift', 'detector_drift_psi > 0.2',
     'detector_drift_psi > 0.1'),
    ('DetectorInputDrift', 'for: 15m', 'for: 5m'),
    ('DetectorCanaryFailing', 'for: 1m', 'for: 0m'),
    ('DetectorTargetDown', 'up{job="detector"}', 'up'),
    ('DetectorTargetDown', 'for: 2m', 'for: 0m'),
]


@pytest.mark.parametrize('alert,old,new', MUTATIONS)
def test_unit_tests_reject_a_broken_rule(tmp_path, alert, old, new):
  with open(os.path.join(DEPLOY, 'alerts.yml')) as f:
    text = f.read()
  assert text.count(old) == 1, f'{old!r} is not once in alerts.yml'
  shutil.copy(os.path.join(DEPLOY, 'alerts_test.yml'), tmp_path)
  (tmp_path / 'alerts.yml').write_text(text.replace(old, new))
  proc = promtool('test', 'rules', 'alerts_test.yml', cwd=tmp_path)
  output = proc.stdout + proc.stderr  # promtool reports failures on stderr.
  assert proc.returncode != 0, output
  assert f'alertname: {alert},' in output, output


# ---- scripts/install_system_packages.sh ---------------------------------

STUB = """#!/bin/sh
echo "{name} DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}} $*" >> "{log}"
{tail}
"""


def run_install(tmp_path, programs, inherit_path):
  """Runs the script with stub apt-get and sudo that log their calls.

  Args:
    tmp_path: a fresh directory.
    programs: names of stub programs on PATH (the "installed" ones).
    inherit_path: whether the real PATH follows the stubs.

  Returns:
    The finished process and the stubs' log lines.
  """
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'calls.log'
  log.touch()
  stubs = {'apt-get': 'exit 0', 'sudo': 'exec "$@"'}
  stubs.update({p: 'exit 0' for p in programs})
  for name, tail in stubs.items():
    path = bin_dir / name
    path.write_text(STUB.format(name=name, log=log, tail=tail))
    path.chmod(0o755)
  os.symlink(shutil.which('env'), bin_dir / 'env')  # The script's `env`.
  path = str(bin_dir)
  if inherit_path:
    path += os.pathsep + os.environ['PATH']
  proc = subprocess.run([shutil.which('bash'), INSTALL], capture_output=True,
                        text=True, env={'PATH': path}, timeout=60)
  return proc, log.read_text().splitlines()


def test_install_script_does_nothing_when_installed(tmp_path):
  for program in ('chromium', 'prometheus', 'promtool'):
    if shutil.which(program) is None:
      pytest.fail(f'{program} is not on PATH: {SETUP_HINT}')
  proc, calls = run_install(tmp_path, [], inherit_path=True)
  assert proc.returncode == 0, proc.stderr
  assert 'nothing to do' in proc.stdout
  assert calls == []


@pytest.mark.parametrize('present,missing', [
    ([], ['chromium', 'prometheus']),
    (['chromium', 'prometheus'], ['prometheus']),  # promtool missing.
    (['prometheus', 'promtool'], ['chromium']),
])
def test_install_script_installs_what_is_missing(tmp_path, present, missing):
  proc, calls = run_install(tmp_path, present, inherit_path=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  for package in missing:
    assert f'installing {package}: ' in proc.stdout
  apt = [c for c in calls if c.startswith('apt-get ')]
  flags = 'install -y -q --no-install-recommends'
  assert apt == [
      'apt-get DEBIAN_FRONTEND=noninteractive update -q',
      f'apt-get DEBIAN_FRONTEND=noninteractive {flags} {" ".join(missing)}']
  # sudo only where it is needed.
  used_sudo = any(c.startswith('sudo ') for c in calls)
  assert used_sudo == (os.geteuid() != 0)

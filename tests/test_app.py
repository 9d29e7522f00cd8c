"""app.py: the page's checks, its generation core (same audio as sample.py, requests kept apart), and the
page itself in headless Chromium (skipped, with the reason, where Gradio, Selenium or Chromium is missing)."""
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf

import app
import cascade

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPTS = os.path.join(ROOT, "checkpoints", "toy")
FAST = {f"--{s}-steps": "2" for s in cascade.STAGES}
RATES = {"wave-generator": 3200, "cascader": 16000, "spec-generator": 16000, "vocoder": 16000, "super-res": 24000}


def _outputs(studio, req):
    """{stage: wav path} of one request, and its last event."""
    wavs, last = {}, None
    for last in studio.generate(req):
        if last.kind == "output":
            wavs[last.stage] = last.wav
    return wavs, last


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return app.Studio("cpu", workdir=str(tmp_path_factory.mktemp("studio")))


@pytest.mark.parametrize("fields, says", [
    (("", "wave", 0, 1.0, CKPTS), "prompt"), (("  ", "wave", 0, 1.0, CKPTS), "prompt"),
    (("x", "wave", 0, 0, CKPTS), "seconds"), (("x", "wave", 0, -1, CKPTS), "seconds"),
    (("x", "wave", 0, 1e9, CKPTS), "seconds"), (("x", "wave", 0, float("nan"), CKPTS), "seconds"),
    (("x", "wave", 0, "abc", CKPTS), "seconds"), (("x", "wave", -1, 1.0, CKPTS), "seed"),
    (("x", "drums", 0, 1.0, CKPTS), "pipeline"), (("x", "wave", 0, 1.0, "/nonexistent"), "checkpoint folder"),
    (("x", "wave", 0, 1.0, CKPTS, {"--cascader-gamma": "2"}), "--cascader-gamma"),
    (("x", "wave", 0, 1.0, CKPTS, {"--super-res-steps": "many"}), "--super-res-steps"),
    (("x", "wave", 0, 1.0, CKPTS, {"--vocoder-schedule": "slow"}), "--vocoder-schedule")])
def test_bad_fields_are_one_line_messages(fields, says):
    with pytest.raises(app.PageError) as e:
        app.read_request(*fields)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_knob_fields_are_sample_pys_flags():
    """The page offers exactly sample.py's per-stage flags, and a blank field keeps the default."""
    import sample
    p = sample.build_parser()
    cli = {f for a in p._actions for f in a.option_strings[:1] if any(f.startswith(f"--{s}-") for s in cascade.STAGES)}
    assert {flag for _, flag, _ in app.knob_flags()} == cli
    req = app.read_request("x", "wave", 0, 1.0, CKPTS, {"--cascader-steps": "7", "--cascader-w": " "})
    assert req.knobs["cascader"] == cascade.Sampling(steps=7) and req.knobs["super-res"] == cascade.Sampling()


@pytest.mark.parametrize("pipeline", ["wave", "spec"])
def test_every_stage_arrives_in_order_at_its_rate_and_matches_sample_py(studio, tmp_path, pipeline):
    import sample
    req = app.read_request("fast drums and bass", pipeline, 3, 0.25, CKPTS, FAST)
    events = [e for e in studio.generate(req) if e.kind != "step"]
    assert [e.kind for e in events] == ["output"] * 3 + ["done"], events
    assert [e.stage for e in events[:3]] == list(cascade.PIPELINES[pipeline])
    for e in events[:3]:
        wave, rate = sf.read(e.wav)
        assert rate == RATES[e.stage] and len(wave) == round(0.25 * rate) and np.sqrt(np.mean(wave ** 2)) > 1e-3
        with open(e.png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    out = str(tmp_path / "sample.wav")
    sample.main(["fast drums and bass", "--pipeline", pipeline, "--seconds", "0.25", "--seed", "3", "--out", out,
                 "--device", "cpu", *[f"{k}={v}" for k, v in FAST.items()]])
    with open(out, "rb") as a, open(events[2].wav, "rb") as b:
        assert a.read() == b.read()           # the page's 24 kHz audio is sample.py's, byte for byte


def test_two_requests_at_once_keep_their_own_outputs(studio):
    reqs = [app.read_request(p, "wave", s, 0.25, CKPTS, FAST) for p, s in (("slow piano", 1), ("fast drums", 2))]
    alone = [_outputs(studio, r)[0] for r in reqs]
    alone = [{k: sf.read(v)[0] for k, v in wavs.items()} for wavs in alone]
    together = [None, None]

    def run(i):
        together[i] = _outputs(studio, reqs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(2):
        wavs, last = together[i]
        assert last.kind == "done" and set(wavs) == set(cascade.PIPELINES["wave"])
        assert all(np.array_equal(sf.read(wavs[k])[0], alone[i][k]) for k in wavs)
    assert os.path.dirname(together[0][0]["super-res"]) != os.path.dirname(together[1][0]["super-res"])
    assert not np.array_equal(alone[0]["super-res"], alone[1]["super-res"])


def test_a_folder_without_checkpoints_is_a_message_and_the_studio_goes_on(studio, tmp_path):
    wavs, last = _outputs(studio, app.read_request("x", "wave", 0, 0.25, str(tmp_path), FAST))
    assert last.kind == "error" and "missing checkpoint" in last.message and not wavs
    wavs, last = _outputs(studio, app.read_request("x", "wave", 0, 0.25, CKPTS, FAST))
    assert last.kind == "done" and len(wavs) == 3


@pytest.mark.parametrize("args", [["--port", "0"], ["--colour", "red"]])
def test_bad_flags_exit_2_with_one_line(args):
    r = subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "app.py: error:" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------
# The page in a real browser: Gradio serving app.py, headless Debian Chromium driven by Selenium

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "", shutil.which("chromedriver") or ""


def browser_missing():
    """Why the browser test cannot run here, or "" when it can."""
    for module in ("gradio", "selenium"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -r requirements-app.txt)"
    if not (CHROMIUM and CHROMEDRIVER):
        return "chromium or chromedriver is not on PATH (apt-get install chromium chromium-driver)"
    return ""


def start_app(log_path, *args):
    """`python app.py` on a free loopback port, one torch thread; returns (process, url) once it serves."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *args], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"app.py did not start: {open(log_path).read()[-2000:]}")


def open_browser(width=1400, height=1100):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def find(driver, css, timeout=60):
    """The first element matching css, waiting for the page's scripts to render it."""
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(lambda d: (d.find_elements("css selector", css) or [None])[0])


def type_into(driver, elem_id, text):
    box = find(driver, f"#{elem_id} input, #{elem_id} textarea")
    box.clear()
    box.send_keys(text, "\t")


def set_knob(driver, flag, value):
    """Open the flag's stage accordion if need be, then type the value into its field."""
    stage = next(s for s in cascade.STAGES if flag.startswith(f"--{s}-"))
    if not driver.find_elements("css selector", f"#{app.knob_id(flag)} textarea, #{app.knob_id(flag)} input"):
        find(driver, f"#knobs-{stage} button").click()
    type_into(driver, app.knob_id(flag), value)


def stage_links(driver):
    """The WAV each stage's player holds (its download link), None where it holds none."""
    return driver.execute_script("return [0, 1, 2].map(k => { const a = document.querySelector("
                                 "`#audio${k} a[data-testid='download-link']`); return a ? a.href : null; });")


def wait_for_stages(driver, timeout):
    """The three stages' WAV links, waiting until every player holds one."""
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: all(stage_links(d)) and stage_links(d))


def message(driver):
    """The page's message line (read in one script call: Gradio re-renders it as it streams)."""
    return driver.execute_script("const m = document.querySelector('#message'); return m ? m.innerText : '';")


@pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "runs")
def test_page_in_headless_chromium_plays_every_stage(tmp_path):
    proc, url = start_app(str(tmp_path / "app.log"))
    driver = open_browser()
    try:
        driver.get(url)
        find(driver, "#generate").click()                 # no prompt yet: a message, and the page goes on
        from selenium.webdriver.support.ui import WebDriverWait
        WebDriverWait(driver, 30).until(lambda d: "write a prompt" in message(d))
        type_into(driver, "prompt", "fast drums and bass")
        type_into(driver, "seconds", "0.5")
        for stage in cascade.PIPELINES[cascade.DEFAULT_PIPELINE]:
            set_knob(driver, f"--{stage}-steps", "3")
        find(driver, "#generate").click()
        links = wait_for_stages(driver, timeout=180)
        for stage, link in zip(cascade.PIPELINES[cascade.DEFAULT_PIPELINE], links):
            wave, rate = sf.read(io.BytesIO(urllib.request.urlopen(link, timeout=10).read()))
            assert rate == RATES[stage] and len(wave) == round(0.5 * rate), (stage, rate, len(wave))
            assert np.isfinite(wave).all() and np.sqrt(np.mean(wave ** 2)) > 1e-3, stage
        assert all(find(driver, f"#picture{k} img").get_attribute("src") for k in range(3))
        WebDriverWait(driver, 30).until(lambda d: "Done" in message(d))
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(30)
    assert "Traceback" not in (tmp_path / "app.log").read_text()

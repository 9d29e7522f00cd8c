"""The page's latency and memory, measured in headless Chromium (app.py; results in bench/results_studio.md).

    python bench/studio.py --runs 20 --seconds 4 --screenshot docs/studio.png

Starts `python app.py` (one torch thread) on a free loopback port, then per run: types a prompt and a
seed, presses Generate, and times until each stage's player holds its new WAV (its download link
appears). Prints one line per run, and the server process's resident memory (VmRSS) after runs
1, 10 and 20 (and at the end). Needs what the browser test needs (requirements-app.txt, Debian's
chromium and chromium-driver).
"""
import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_app import find, message, open_browser, stage_links, start_app, type_into  # noqa: E402

PROMPTS = ["fast drums and bass", "slow flute solo in a minor key", "a piano waltz with drums", "slow organ chorale"]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]) / 1024


def one_run(driver, prompt, seed, seconds, before, timeout=1800):
    """Seconds from the click to each stage's new WAV in its player."""
    type_into(driver, "prompt", prompt)
    type_into(driver, "seed", str(seed))
    type_into(driver, "seconds", str(seconds))
    start = time.perf_counter()
    find(driver, "#generate").click()
    ready = [None] * 3
    while None in ready and time.perf_counter() - start < timeout:
        for k, link in enumerate(stage_links(driver)):
            if ready[k] is None and link and link not in before:
                ready[k] = time.perf_counter() - start
        if "Error" in message(driver):
            raise RuntimeError(message(driver))
        time.sleep(0.25)            # coarse polling: the browser's own work competes for the CPU
    return ready, stage_links(driver)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--screenshot", default="", help="PNG of the page after the first run")
    p.add_argument("--log", default="/tmp/studio_bench_app.log")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))     # stopping the bench also stops its server and browser
    proc, url = start_app(args.log)
    driver = open_browser(1300, 1300)
    try:
        driver.get(url)
        find(driver, "#generate")
        print(f"server RSS at start: {rss_mb(proc.pid):.0f} MB", flush=True)
        links = []
        for i in range(1, args.runs + 1):
            ready, links = one_run(driver, PROMPTS[i % len(PROMPTS)], i, args.seconds, set(links))
            print(f"run {i}: first stage {ready[0]:.1f} s, second {ready[1]:.1f} s, last {ready[2]:.1f} s; "
                  f"server RSS {rss_mb(proc.pid):.0f} MB", flush=True)
            if i == 1 and args.screenshot:
                time.sleep(2)               # let the players draw their waveforms
                driver.save_screenshot(args.screenshot)
                from PIL import Image       # a 256-colour PNG keeps the picture small
                Image.open(args.screenshot).convert("RGB").quantize(256).save(args.screenshot, optimize=True)
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()

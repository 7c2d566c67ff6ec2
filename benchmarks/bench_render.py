"""Where an image rollout's time goes on a machine without a GPU: a robosuite step with and without its two
84x84 cameras, and one camera image rendered alone under the scene's default settings and with its two costly
features switched off (4x multisampling, the table's reflection: the scene drawn a second time, mirrored).

    python benchmarks/bench_render.py [--tasks lift can square] [--steps 40] [--seconds 2]

The environments are the datasets' (cleandiffuser.env.robosuite.make_env_args), so "step, cameras" is what a
rollout or the demo generator pays per step before any policy runs. The switched-off variants change the pixels;
they show what the software renderer spends, not a setting the library applies.
"""
import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported: the offscreen backend robosuite uses

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from bench_core import timeit  # noqa: E402
from cleandiffuser.env.robosuite import make_env, make_env_args  # noqa: E402


def ms_per_step(env, steps: int) -> float:
    env.reset()
    action = np.zeros(env.action_spec[0].shape)
    env.step(action)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    return (time.perf_counter() - start) / steps * 1e3


def ms_per_image(model, data, seconds: float, msaa: bool = True, reflection: bool = True) -> float:
    samples = model.vis.quality.offsamples
    model.vis.quality.offsamples = samples if msaa else 0  # read when the render context is made
    renderer = mujoco.Renderer(model, 84, 84)
    model.vis.quality.offsamples = samples

    def render():
        renderer.update_scene(data, camera="agentview")
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(reflection)
        return renderer.render()

    elapsed = timeit(render, seconds) * 1e3
    renderer.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["lift", "can", "square"])
    ap.add_argument("--steps", type=int, default=40, help="env steps timed per row (their mean)")
    ap.add_argument("--seconds", type=float, default=2.0, help="per image setting (best of 5 chunks, bench_core)")
    args = ap.parse_args()
    print("ms, one thread of Python; the renderer is Mesa's software EGL unless a GPU provides one\n")
    print("| task | step, no cameras | step, 2 cameras | 1 image | no MSAA | no reflection | neither |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for task in args.tasks:
        plain = make_env(make_env_args(task, images=False))
        no_cameras = ms_per_step(plain, args.steps)
        model, data = plain.sim.model._model, plain.sim.data._data
        image = [ms_per_image(model, data, args.seconds, msaa, reflection)
                 for msaa, reflection in ((True, True), (False, True), (True, False), (False, False))]
        plain.close()
        cameras = make_env(make_env_args(task, images=True))
        with_cameras = ms_per_step(cameras, args.steps)
        cameras.close()
        print(f"| {task} | {no_cameras:.1f} | {with_cameras:.1f} | " + " | ".join(f"{t:.1f}" for t in image) + " |",
              flush=True)


if __name__ == "__main__":
    main()

"""One VLA-convention interface over every simulated task.

:class:`VLAEnv` wraps a raw ManiSkill3 env (one env, PhysX CPU) so that every task looks the same to a
policy:

* observation: a dict with ``instruction`` (str), ``image`` (H, W, 3 uint8; obs_mode rgb/both) and
  ``state`` (float32 vector; obs_mode state/both) built by the task's ``state_fn``;
* action: float32 (7,) in PHYSICAL units, the OpenVLA/SimplerEnv convention: xyz delta (m), rotation
  delta (axis-angle, rad), gripper (+1 open, -1 close). The task's :class:`ActionAdapter` declares the
  physical bounds and converts to the controller's input;
* ``info["success"]`` (bool) every step, with the backend's other info as plain Python/numpy values.

The wrapper steps the backend's unwrapped env and truncates episodes itself at ``max_episode_steps``, so
training and evaluation truncate identically whatever wrappers the backend's ``gym.make`` adds.
NaN/inf actions raise ValueError; out-of-range actions are clipped or refused (``EnvOptions.out_of_range``)
and counted in ``info["clipped_actions"]`` (per episode) and :attr:`VLAEnv.clipped_actions`.

Variations (``EnvOptions.layout``, ``instruction``, ``visual``; :mod:`vla_cl.envs.variation`): the task's
``placement`` chooses where its objects start (before the backend's reset, where the backend builds the
start itself, as the Bridge scenes do, and by moving the drawn scene after it, as the Panda tasks do), the
instruction may be replaced by one of the task's held-out paraphrases, and ``restyle`` may change the
scene's appearance, each drawn from its own stream of the episode's seed. A layout with a finite set of
starts names each episode's in the reset's ``info["initial_state"]`` (None: a continuous draw, every
episode's start its own).

Seeding: ``reset(seed=s)`` places the scene exactly as any other env of the task does with ``s``
(``EnvOptions.seed`` seeds the first reset when none is given). The same actions then give the same
rollout, bit for bit in a fresh env; an env that already ran other episodes can differ by ~1e-7 in
later states (PhysX keeps solver caches across resets); in the tests, collections on one env and on a
vector of envs still gave identical successes and episode lengths.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from vla_cl.envs.maniskill import render_frame, to_numpy
from vla_cl.envs.registry import EnvOptions, TaskSpec
from vla_cl.envs.variation import INSTRUCTION_STREAM, LAYOUT_STREAM, VISUAL_STREAM, Placing, episode_rng

ACTION_DIM = 7
ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
GRIPPER_OPEN, GRIPPER_CLOSE = 1.0, -1.0
MAX_INSTRUCTION_CHARS = 1024


@dataclasses.dataclass(frozen=True, eq=False)
class ActionAdapter:
    """Physical 7-D action -> the controller's action, and the physical bounds of the action space.

    The default conversion is elementwise linear, ``controller = gain * physical``: for Panda's
    ``pd_ee_delta_pose`` (normalised [-1, 1] meaning +-0.1 m / +-0.1 rad) the gain is 10 on the first six
    dims and 1 on the gripper. Tasks whose controller needs more (a frame change, a binarised gripper)
    pass ``convert``, which then replaces the linear map.
    """

    low: np.ndarray  # physical lower bound per dim (7,)
    high: np.ndarray  # physical upper bound per dim (7,)
    gain: np.ndarray | None = None  # controller = gain * physical; None = identity
    convert: Callable[[np.ndarray], np.ndarray] | None = None  # overrides the linear map when given

    def __post_init__(self) -> None:
        low = np.asarray(self.low, dtype=np.float32)
        high = np.asarray(self.high, dtype=np.float32)
        if low.shape != (ACTION_DIM,) or high.shape != (ACTION_DIM,) or not np.all(low < high):
            raise ValueError(f"action bounds must be two (7,) arrays with low < high, got {low} and {high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        if self.gain is not None:
            object.__setattr__(self, "gain", np.asarray(self.gain, dtype=np.float32).reshape(ACTION_DIM))

    @classmethod
    def symmetric(cls, translation: float, rotation: float, **kwargs: Any) -> ActionAdapter:
        """Bounds +-translation (m), +-rotation (rad), gripper in [-1, 1]."""
        bound = np.array([translation] * 3 + [rotation] * 3 + [1.0], dtype=np.float32)
        return cls(low=-bound, high=bound, **kwargs)

    def __call__(self, physical: np.ndarray) -> np.ndarray:
        if self.convert is not None:
            return np.asarray(self.convert(physical), dtype=np.float32)
        return physical if self.gain is None else (self.gain * physical).astype(np.float32)

    def action_stats(self) -> dict[str, list]:
        """OpenVLA-style action statistics (q01/q99/mask) spanning the action space; the gripper is
        unmasked (it is already +-1 and passes through normalisation unchanged)."""
        mask = [True] * (ACTION_DIM - 1) + [False]
        rounded = lambda values: [round(float(v), 6) for v in values]
        return {"q01": rounded(self.low), "q99": rounded(self.high), "mask": mask}


def plain(value: Any) -> Any:
    """Backend info values (batched torch tensors) -> Python scalars / numpy arrays without the batch dim."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if hasattr(value, "detach") or isinstance(value, np.ndarray):
        array = to_numpy(value)
        return array.item() if array.ndim == 0 else array
    return value


def describe_entries(action: np.ndarray, bad: np.ndarray) -> str:
    return ", ".join(f"[{i}] {ACTION_NAMES[i]}={float(action[i])!r}" for i in np.flatnonzero(bad))


StateFn = Callable[[Any, bool], np.ndarray]
InstructionFn = Callable[[Any], str]
ImageFn = Callable[[Any, Any], np.ndarray]
RestyleFn = Callable[[Any, np.random.Generator], None]


class VLAEnv(gym.Env):
    """A task behind the VLA-convention interface (see the module docstring).

    ``raw_env``: the backend env as created (its outer gym wrappers are bypassed; see above).
    ``state_fn(sim, privileged) -> vector``: proprioception, plus object/goal state when privileged,
    read from the unwrapped backend env ``sim``. ``action_adapter``: bounds and conversion of actions.
    ``instruction_fn(sim) -> str``: the episode's instruction (default: ``spec.instruction``).
    ``image_fn(sim, raw_obs) -> (H, W, 3) uint8``: the observation image (default: the ``camera``
    sensor's rgb, or the first camera's, resized to ``options.image_size`` with area interpolation).
    ``placement``: how the task's objects go onto the training grid (tasks without one support only the
    backend's own layouts); ``restyle(sim, rng)``: the task's ``visual="shifted"`` appearance;
    ``after_reset(sim)``: called once the backend exists and after each of its resets (e.g. to swap in a
    faster controller, :mod:`vla_cl.envs.fast_control`).
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        raw_env: Any,
        spec: TaskSpec,
        options: EnvOptions,
        *,
        state_fn: StateFn,
        action_adapter: ActionAdapter,
        instruction_fn: InstructionFn | None = None,
        image_fn: ImageFn | None = None,
        camera: str | None = None,
        placement: Placing | None = None,
        restyle: RestyleFn | None = None,
        after_reset: Callable[[Any], Any] | None = None,
    ):
        if (placement is None and options.layout != "grid") or (restyle is None and options.visual != "default"):
            raise ValueError(f"{spec.task_id}: its factory gives no way to produce layout={options.layout!r} "
                             f"visual={options.visual!r}; declare the task's layouts and visuals in its TaskSpec")
        self.raw_env = raw_env
        self.sim = raw_env.unwrapped
        self.task_spec = spec
        self.options = options
        self.state_fn = state_fn
        self.action_adapter = action_adapter
        self.instruction_fn = instruction_fn
        self.image_fn = image_fn
        self.camera = camera
        self.placement = placement
        self.restyle = restyle
        self.after_reset = after_reset  # called with the backend env after it was created and after every reset
        if after_reset is not None:
            after_reset(self.sim)
        self.max_episode_steps = options.max_episode_steps or spec.max_episode_steps
        self.render_mode = "rgb_array" if options.render_size is not None else None
        self.action_space = gym.spaces.Box(action_adapter.low, action_adapter.high, dtype=np.float32)
        self.action_stats = action_adapter.action_stats()
        self.clipped_actions = 0  # actions clipped in the current episode
        self.total_clipped_actions = 0  # ... since the env was created
        self.elapsed_steps = 0
        self.instruction = spec.instruction
        self.initial_state: str | None = None  # the named start of this episode, if its layout has a finite set
        self._next_seed = options.seed
        self.observation_space = self._build_observation_space()

    # ------------------------------------------------------------------ spaces and observations
    @property
    def wants_state(self) -> bool:
        return self.options.obs_mode in ("state", "both")

    @property
    def wants_image(self) -> bool:
        return self.options.obs_mode in ("rgb", "both")

    def _build_observation_space(self) -> gym.spaces.Dict:
        # The backend reset itself when it was created, so the state layout can be read now.
        instruction = gym.spaces.Text(MAX_INSTRUCTION_CHARS, min_length=0, charset=string.printable)
        spaces: dict[str, gym.spaces.Space] = {"instruction": instruction}
        if self.wants_state:
            dim = self._state().shape[0]
            spaces["state"] = gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)
        if self.wants_image:
            side = self.options.image_size
            spaces["image"] = gym.spaces.Box(0, 255, (side, side, 3), dtype=np.uint8)
        return gym.spaces.Dict(spaces)

    def _state(self) -> np.ndarray:
        state = np.asarray(self.state_fn(self.sim, self.options.privileged_state), dtype=np.float32)
        if state.ndim != 1:
            raise ValueError(f"{self.task_spec.task_id}: state_fn must return a vector, got shape {state.shape}")
        return state

    def _image(self, raw_obs: Any) -> np.ndarray:
        if self.image_fn is not None:
            return np.ascontiguousarray(self.image_fn(self.sim, raw_obs), dtype=np.uint8)
        import cv2

        cameras = raw_obs["sensor_data"]
        name = self.camera or next(iter(cameras))
        image = to_numpy(cameras[name]["rgb"])[..., :3]
        side = self.options.image_size
        if image.shape[:2] != (side, side):
            image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image, dtype=np.uint8)

    def _observation(self, raw_obs: Any) -> dict[str, Any]:
        obs: dict[str, Any] = {"instruction": self.instruction}
        if self.wants_state:
            obs["state"] = self._state()
        if self.wants_image:
            obs["image"] = self._image(raw_obs)
        return obs

    # ------------------------------------------------------------------ actions
    def check_action(self, action: Any) -> tuple[np.ndarray, bool]:
        """Validate a physical action; returns (action to execute, whether it was clipped)."""
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (ACTION_DIM,):
            raise ValueError(
                f"action must have shape (7,) = xyz delta, rotation delta, gripper; got shape {action.shape}"
            )
        bad = ~np.isfinite(action)
        if bad.any():
            raise ValueError(f"action has non-finite entries: {describe_entries(action, bad)}")
        outside = (action < self.action_space.low) | (action > self.action_space.high)
        if not outside.any():
            return action, False
        if self.options.out_of_range == "refuse":
            bounds = ", ".join(
                f"{ACTION_NAMES[i]} in [{self.action_space.low[i]:g}, {self.action_space.high[i]:g}]"
                for i in np.flatnonzero(outside)
            )
            raise ValueError(
                f"action out of range: {describe_entries(action, outside)} (allowed: {bounds}); "
                "clip it or create the env with out_of_range='clip'"
            )
        return np.clip(action, self.action_space.low, self.action_space.high), True

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed, self._next_seed = self._next_seed, None
        else:
            self._next_seed = None
        super().reset(seed=seed)
        backend_options = dict(options or {})
        self.initial_state = None
        if self._places_objects:  # a start the backend must build (it settles the objects where they start)
            asked, self.initial_state = self.placement.reset_options(
                self.sim, self.options.layout, seed, episode_rng(seed, LAYOUT_STREAM, self.np_random))
            backend_options.update(asked)
        raw_obs, raw_info = self.sim.reset(seed=seed, options=backend_options or None)
        if self.after_reset is not None:  # a reconfiguring reset rebuilds the robot and its controllers
            self.after_reset(self.sim)
        if self._vary_scene(seed):  # the backend's observation and info describe the scene before the change
            raw_obs, raw_info = self.sim.get_obs(), self.sim.get_info()
        self.elapsed_steps = 0
        self.clipped_actions = 0
        self.instruction = self._episode_instruction(seed)
        info = plain(raw_info)
        info.update(success=bool(info.get("success", False)), clipped_actions=0, elapsed_steps=0,
                    initial_state=self.initial_state)
        return self._observation(raw_obs), info

    @property
    def _places_objects(self) -> bool:
        return self.placement is not None and self.options.layout != "random"

    def _vary_scene(self, seed: int | None) -> bool:
        """Apply the layout and visual options to the freshly reset scene; True if anything moved or changed."""
        changed = False
        if self._places_objects:
            changed = self.placement.apply(self.sim, self.options.layout,
                                           episode_rng(seed, LAYOUT_STREAM, self.np_random))
        if self.options.visual == "shifted":
            self.restyle(self.sim, episode_rng(seed, VISUAL_STREAM, self.np_random))
            changed = True
        return changed

    def _episode_instruction(self, seed: int | None) -> str:
        if self.options.instruction == "paraphrase":
            paraphrases = self.task_spec.paraphrases
            return paraphrases[int(episode_rng(seed, INSTRUCTION_STREAM, self.np_random).integers(len(paraphrases)))]
        return self.instruction_fn(self.sim) if self.instruction_fn else self.task_spec.instruction

    def step(self, action: Any):
        action, clipped = self.check_action(action)
        if clipped:
            self.clipped_actions += 1
            self.total_clipped_actions += 1
        raw_obs, reward, terminated, _, raw_info = self.sim.step(self.action_adapter(action))
        self.elapsed_steps += 1
        info = plain(raw_info)
        success = bool(info.get("success", False))
        terminated = bool(plain(terminated))
        truncated = not terminated and self.elapsed_steps >= self.max_episode_steps
        info.update(success=success, clipped_actions=self.clipped_actions, elapsed_steps=self.elapsed_steps)
        return self._observation(raw_obs), float(plain(reward)), terminated, truncated, info

    def render(self) -> np.ndarray:
        """One RGB frame (H, W, 3) uint8 from the task's render camera (independent of obs_mode)."""
        if self.render_mode is None:
            raise ValueError(
                f"{self.task_spec.task_id} was created without a render camera; "
                "pass render_size=N (e.g. 256) to vla_cl.envs.make to render frames"
            )
        return render_frame(self.sim)

    def close(self) -> None:
        self.raw_env.close()

    def __repr__(self) -> str:
        return f"VLAEnv({self.task_spec.task_id}, obs_mode={self.options.obs_mode})"

"""The one config loader (autonorm.configs): group options read with their defaults lists, unknown
options named with their choices, a running Hydra app left as it was, configs written once."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobRuntime
from omegaconf import OmegaConf

from autonorm import CONF_DIR, configs
from autonorm.config import ConfigError


def test_load_group_is_the_composed_group_with_its_defaults():
    conv = configs.load_group("model", "vit_micro_conv")
    micro = configs.load_group("model", "vit_micro")
    # built on vit_micro (itself on model/base/vit.yaml): only the name, patch and stem differ
    assert {k for k in micro if micro[k] != conv[k]} == {"name", "patch_size", "stem"}
    assert conv.stem == "conv" and conv.patch_size == 8 and conv.embed_dim == 64 and conv._target_.endswith("VisionTransformer")
    data = configs.load_group("data", "mnist")
    plain = OmegaConf.to_container(data)
    assert plain == OmegaConf.to_container(configs.compose(["data=mnist"]).data) and plain["root"] == "${paths.data_root}"  # unresolved
    assert not OmegaConf.is_struct(data)  # a detached copy the phases may extend


def test_unknown_option_names_the_choices():
    with pytest.raises(ConfigError, match=r"data=nope is not a known option; choose one of cifar10, cifar10_mini, mnist, mnist_mini"):
        configs.load_group("data", "nope")


def test_compose_inside_a_running_hydra_app_leaves_it_as_it_was():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), job_name="train", version_base="1.3"):
        running = GlobalHydra.instance().hydra
        cfg = configs.compose(["norm=dyt"])
        assert cfg.norm.name == "dyt"
        assert GlobalHydra.instance().is_initialized() and GlobalHydra.instance().hydra is running
        assert JobRuntime.instance().get("name") == "train"  # the running job keeps its name
    assert not GlobalHydra.instance().is_initialized()


def test_eval_none_is_the_default_with_every_suite_off():
    default, none = configs.compose(["eval=default"]).eval, configs.compose(["eval=none"]).eval
    off = {"robustness", "profile", "plots", "save_norm_weights"}
    assert all(default[k] for k in off) and not any(none[k] for k in off)
    assert {k: v for k, v in OmegaConf.to_container(none).items() if k not in off} == {
        k: v for k, v in OmegaConf.to_container(default).items() if k not in off
    }


def test_one_recipe_optimiser_for_the_recipes_and_the_tables():
    recipe = OmegaConf.to_container(configs.compose(["+optim=recipe"]).optim)
    cifar = OmegaConf.to_container(configs.compose(["experiment=fast_cifar10"]).optim)
    mnist = OmegaConf.to_container(configs.compose(["experiment=fast_mnist"]).optim)
    assert cifar == recipe and {k for k in mnist if mnist[k] != recipe[k]} == {"warmup_epochs", "label_smoothing"}
    for sweep in ("table_mini", "table_full", "table_recipe"):
        assert OmegaConf.to_container(configs.compose([f"sweep={sweep}"]).optim) == recipe, sweep

"""The one registry type (``vla_cl.registry.Registry``) and the four tables built on it: lazy entries,
listing without importing, errors that list the known names, entries registered at run time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vla_cl.registry import Registry, load_reference

LAZY = "vla_cl.kl.fit:r_squared"


def test_listing_does_not_import_and_get_imports_once(tmp_path, monkeypatch):
    (tmp_path / "lazy_widget.py").write_text("IMPORTS = []\nIMPORTS.append(1)\n\ndef widget():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_widget", raising=False)
    table = Registry("widget", {"b": "lazy_widget:widget", "a": len})
    assert table.names() == ["a", "b"] and list(table) == ["b", "a"]  # sorted; registration order
    assert "b" in table and "c" not in table and len(table) == 2
    assert "lazy_widget" not in sys.modules
    first = table.get("b")
    module = sys.modules["lazy_widget"]
    assert first is module.widget and table["b"] is first and table.get("a") is len
    assert dict(table.items()) == {"b": first, "a": len}
    assert module.IMPORTS == [1]


def test_unknown_name_lists_the_known_ones():
    table = Registry("widget", {"beta": len, "alpha": abs})
    with pytest.raises(ValueError, match=r"^unknown widget 'gamma'; registered widgets: alpha, beta$"):
        table.get("gamma")
    plural = Registry("policy", {"x": len}, plural="policies")
    with pytest.raises(ValueError, match="registered policies: x"):
        plural["y"]


def test_registering_at_run_time_and_replacing():
    table = Registry("widget", {"a": int})
    table.register("b", float)
    assert table.get("b") is float
    table.register("a", int)  # the same target again: nothing to do
    with pytest.raises(ValueError, match="widget 'a' is already registered as <class 'int'>; pass replace=True"):
        table.register("a", float)
    table.register("a", float, replace=True)
    assert table.get("a") is float
    table.register("a", LAZY, replace=True)  # a replaced entry is resolved afresh, not from the cache
    assert table.get("a").__name__ == "r_squared"
    with pytest.raises(ValueError, match="'a' is already registered as 'vla_cl.kl.fit:r_squared'"):
        table.register("a", "vla_cl.kl.fit:fit_forgetting")
    table.register("c", {"a": "long value"})
    with pytest.raises(ValueError, match="'c' is already registered differently"):  # no long repr
        table.register("c", {"b": 1})
    copy = table.copy()
    copy.register("d", int)
    assert "d" in copy and "d" not in table
    copy.unregister("d")
    assert "d" not in copy
    with pytest.raises(ValueError, match="unknown widget 'd'"):
        copy.unregister("d")


@pytest.mark.parametrize("target", ["vla_cl.kl.fit.r_squared", "vla_cl.kl.fit:", ":r_squared", "a:b:c"])
def test_malformed_references_are_refused_at_registration(target):
    with pytest.raises(ValueError, match="package.module:ClassName"):
        Registry("widget").register("w", target)
    with pytest.raises(ValueError, match="a widget name must be a non-empty string"):
        Registry("widget").register("", len)


def test_a_missing_attribute_is_named():
    with pytest.raises(ValueError, match="names no attribute 'nope' of module 'vla_cl.kl.fit'"):
        load_reference("vla_cl.kl.fit:nope")


def test_check_refuses_the_wrong_kind_of_entry_and_leaves_nothing_cached():
    def only_types(name, obj):
        if not isinstance(obj, type):
            raise TypeError(f"{name} is not a class")

    table = Registry("widget", {"f": LAZY, "t": "collections:OrderedDict"}, check=only_types)
    with pytest.raises(TypeError, match="f is not a class"):
        table.get("f")
    with pytest.raises(TypeError, match="f is not a class"):
        table.get("f")  # checked again, not served from a cache
    assert table.get("t").__name__ == "OrderedDict"


def test_modules_register_their_entries_when_first_needed(tmp_path, monkeypatch):
    modules = ["widgets_one"]
    table = Registry("widget", modules=modules)
    monkeypatch.setitem(sys.modules, "registry_under_test", table)  # what the task modules reach
    for module, entry in [("widgets_one", "one"), ("widgets_two", "two")]:
        (tmp_path / f"{module}.py").write_text(
            f"import sys\nsys.modules['registry_under_test'].register({entry!r}, len)\n"
        )
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "widgets_one" not in sys.modules
    assert table.names() == ["one"] and "widgets_one" in sys.modules
    modules.append("widgets_two")  # a module listed after the first lookup is imported on the next one
    assert table.get("two") is len and table.names() == ["one", "two"]


def test_the_updater_table_refuses_what_is_not_an_updater():
    from vla_cl.updaters.registry import UPDATERS
    from vla_cl.updaters.rl import PPO

    table = UPDATERS.copy()
    table.register("not_ppo", PPO)
    table.register("plain", "collections:OrderedDict")
    for name in ("not_ppo", "plain"):
        with pytest.raises(TypeError, match=f"not an Updater named '{name}'"):
            table.get(name)
    assert table.get("ppo") is PPO


def test_the_four_tables_share_the_type_and_the_error():
    from vla_cl.cli.registry import COMMANDS
    from vla_cl.envs.registry import TASKS
    from vla_cl.policies.registry import POLICIES
    from vla_cl.updaters.registry import UPDATERS

    for table, kind in [(COMMANDS, "command"), (TASKS, "task id"), (POLICIES, "policy"), (UPDATERS, "updater")]:
        assert isinstance(table, Registry)
        with pytest.raises(ValueError, match=f"unknown {kind} 'nope'; registered "):
            table.get("nope")
    assert list(COMMANDS)[:2] == ["info", "sim-check"]  # help lists the verbs in the table's order


def test_listing_every_table_imports_no_entry():
    code = (
        "import sys\n"
        "from vla_cl.cli.registry import COMMANDS\n"
        "from vla_cl.policies.registry import list_policies\n"
        "from vla_cl.updaters.registry import list_updaters\n"
        "names = [list(COMMANDS), list_policies(), list_updaters()]\n"
        "heavy = ('torch', 'vla_cl.updaters.rl', 'vla_cl.policies.state_policy', 'vla_cl.razor.pipeline')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""View specs: every accepted form, every error, frozen and tied parameters, depth and coverage."""
import re

import pytest
import torch
from torch import nn

from dynamics.record.views import resolve_views
from tests.harness import TwoView


def _views(assignment):
    return {p.name: p.view for p in assignment.params}


def test_dict_of_modules_lists_globs_regex_and_callable_agree():
    model = TwoView()
    forms = [
        {"cc": model.cc, "mlo": model.mlo},
        {"cc": [model.cc[0], model.cc[1], model.cc[3]], "mlo": [model.mlo]},
        {"cc": "cc.*", "mlo": "mlo.*"},
        {"cc": re.compile(r"^cc\."), "mlo": re.compile(r"^mlo\.")},
        lambda name: name.split(".")[0] if name.startswith(("cc", "mlo")) else None,
    ]
    results = [_views(resolve_views(model, f)) for f in forms]
    assert all(r == results[0] for r in results)
    assert results[0]["head.weight"] == "shared" and results[0]["cc.1.weight"] == "cc"


def test_shared_name_is_configurable_and_reserved():
    model = TwoView()
    a = resolve_views(model, {"cc": model.cc}, shared_name="fusion")
    assert _views(a)["head.bias"] == "fusion" and a.views == ["cc", "fusion"]
    with pytest.raises(ValueError, match="'shared' is reserved"):
        resolve_views(model, {"shared": model.cc})


def test_errors_name_the_offender():
    model = TwoView()
    with pytest.raises(ValueError, match=r"view 'mlo': module Linear is not part of the model"):
        resolve_views(model, {"cc": model.cc, "mlo": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match=r"view 'mlo': pattern 'nope\.\*' matches no trainable parameter"):
        resolve_views(model, {"cc": model.cc, "mlo": "nope.*"})
    with pytest.raises(ValueError, match=r"'cc\.0\.weight' is claimed by two views: 'cc' and 'both'"):
        resolve_views(model, {"cc": model.cc, "both": "*.0.weight"})
    with pytest.raises(ValueError, match="frozen"):
        model.mlo.requires_grad_(False)
        resolve_views(model, {"cc": model.cc, "mlo": model.mlo})


def test_frozen_are_skipped_and_listed_and_any_number_of_views():
    model = TwoView()
    model.cc[0].weight.requires_grad_(False)
    a = resolve_views(model, {"one": model.cc, "two": model.mlo, "three": model.head})
    assert "cc.0.weight" not in _views(a) and a.frozen == ["cc.0.weight"]
    coverage = a.coverage()
    assert coverage.set_index("param").loc["cc.0.weight", "status"] == "frozen"
    assert set(coverage["view"].dropna()) == {"one", "two", "three"}
    single = resolve_views(model, {"only": model.cc})
    assert single.views == ["only", "shared"]


def test_tied_parameters_counted_once_with_aliases():
    model = TwoView()
    model.extra = nn.Linear(6, 6)
    model.extra.weight = model.mlo[2].weight  # tied
    a = resolve_views(model, {"cc": model.cc, "mlo": model.mlo})
    names = [p.name for p in a.params]
    assert names.count("mlo.2.weight") == 1 and "extra.weight" not in names
    tied = next(p for p in a.params if p.name == "mlo.2.weight")
    assert tied.aliases == ("extra.weight",)
    assert len(a.tensors) == len({id(t) for t in a.tensors})


def test_depth_counts_layers_inside_each_view_and_coverage_has_numel():
    model = TwoView()
    a = resolve_views(model, {"cc": model.cc, "mlo": model.mlo})
    depth = {p.name: p.depth for p in a.params}
    assert [depth[n] for n in ("cc.0.weight", "cc.0.bias", "cc.1.weight", "cc.3.weight")] == [0, 0, 1, 2]
    assert [depth[n] for n in ("mlo.0.weight", "mlo.2.bias", "head.weight")] == [0, 1, 0]
    coverage = a.coverage().set_index("param")
    assert coverage.loc["cc.0.weight", "numel"] == 5 * 6 and coverage.loc["cc.3.bias", "layer"] == "cc.3"


def test_bad_view_types():
    model = TwoView()
    with pytest.raises(TypeError):
        resolve_views(model, 42)
    with pytest.raises(ValueError, match="returned 3"):
        resolve_views(model, lambda name: 3)


def test_views_named_without_parameters_need_attribution(tmp_path):
    import dynamics
    model = TwoView()
    with pytest.raises(ValueError, match=r"\['cc', 'mlo'\] own no parameter"):
        dynamics.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), views=["cc", "mlo"], out=tmp_path / "r")
    assert not (tmp_path / "r").exists()



def test_a_callable_views_of_the_model_is_an_error_saying_it_maps_parameter_names():
    """A function of the model (as Lightning users write for views_of=) given as views=: called with a parameter
    name, it fails; the error says what a callable views= is and where a function of the model goes."""
    model = nn.Module()
    model.model = TwoView()
    with pytest.raises(TypeError, match=r"views= is a callable, so it maps each parameter name to its view: "
                                        r"views\(name: str\) -> str \| None.*'model\.cc\.0\.weight'.*AttributeError: "
                                        r"'str' object has no attribute 'model'.*views_of="):
        resolve_views(model, lambda m: {"cc": m.model.cc, "mlo": m.model.mlo})


def test_a_callable_views_returning_a_mapping_is_an_error_saying_it_maps_parameter_names():
    model = TwoView()
    with pytest.raises(ValueError, match=r"views\(name: str\) -> str \| None.*returned a dict for parameter "
                                         r"'cc\.0\.weight'.*views_of="):
        resolve_views(model, lambda m: {"cc": "cc.*"})


def test_a_misspelt_pattern_suggests_the_close_names_and_says_it_is_a_glob():
    model = nn.Module()
    model.model = TwoView()
    with pytest.raises(ValueError, match=r"view 'cc': pattern 'model\.ccc' matches no trainable parameter; did you "
                                         r"mean 'model\.cc', .*\? \(a string is read as a glob \(fnmatch\) over parameter "
                                         r"names: 'model\.cc\.\*' matches a module's parameters\)"):
        resolve_views(model, {"cc": "model.ccc", "mlo": "model.mlo.*"})
    with pytest.raises(ValueError, match=r"pattern 'model\.cc' matches no trainable parameter; did you mean "
                                         r"'model\.cc\.\*'\?"):
        resolve_views(model, {"cc": "model.cc", "mlo": "model.mlo.*"})  # a module's name without the glob
    with pytest.raises(ValueError, match=r"pattern 'model\.mlo\.3\.weight' matches no trainable parameter; did "
                                         r"you mean 'model\.mlo\.2\.weight'"):
        resolve_views(model, {"cc": "model.cc.*", "mlo": "model.mlo.3.weight"})

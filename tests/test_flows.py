"""Python flows and modules (`byzer_like.flows`), with LazyLLM's semantics: what each flow passes on, in what
order, at once (threads, proved with barriers every branch must reach), bound references, registered functions,
typed errors naming the stage, trees, and the modules' lifecycle (the seed's MyModule example as written there).
Pure Python, but for the one Ray test (`remote` stages on the session's cluster)."""
from __future__ import annotations

import os
import threading

import pytest

from byzer_like import flows
from byzer_like.errors import ByzerError, FlowDefinitionError, FlowInputError, StageError, UnknownOptionError
from byzer_like.flows import (ActionModule, ModuleBase, _0, _1, bind, diverter, module_register, package, parallel,
                              pipeline, register, root, switch, warp)

pytestmark = pytest.mark.timeout(60)


def barrier_stage(barrier: threading.Barrier, fn=lambda x: x):
    """A stage that returns only once every party of `barrier` has reached it (BrokenBarrierError after 10 s):
    branches that run one after the other never pass it."""
    def stage(x):
        barrier.wait()
        return fn(x)
    return stage


# -- pipeline ---------------------------------------------------------------------------------------
def test_pipeline_passes_each_output_on_and_post_action_sees_the_last():
    seen = []
    p = pipeline(lambda x: x + 1, lambda x: x * 10, post_action=lambda out: seen.append(out) or "dropped")
    assert p(1) == 20
    assert seen == [20]


def test_a_package_is_unpacked_into_the_next_stage_and_a_tuple_is_one_value():
    assert pipeline(lambda: package(1, 2), lambda a, b: a - b)() == -1
    assert pipeline(lambda: (1, 2), lambda t: t[::-1])() == (2, 1)
    assert pipeline(lambda a, b: a * b)(3, 4) == 12  # several arguments are a package
    assert package((1, 2)) == package(1, 2) and repr(package(1, 2)) == "package(1, 2)"


def test_named_stages_indexing_and_classes_instantiated():
    class Double:
        def __call__(self, x):
            return 2 * x

    p = pipeline(proc=Double, val=lambda x: x + 1)
    assert p(5) == 11
    assert isinstance(p.proc, Double) and p["proc"] is p.proc and p[0] is p.proc and p[1] is p.val
    with pytest.raises(AttributeError, match="did you mean 'proc'"):
        p.prc


def test_with_block_names_stages_and_refuses_a_duplicate():
    with pipeline() as p:
        p.first = lambda x: x + 1
        p.second = lambda x: x * 3
    assert p(1) == 6
    with pytest.raises(FlowDefinitionError, match="already has a stage named 'first'"):
        with pipeline() as q:
            q.first = abs
            q.first = abs
    with pytest.raises(FlowDefinitionError, match="only inside its `with` block"):
        p.first = abs


def test_a_flow_built_in_another_with_block_becomes_its_stage():
    with pipeline() as p:
        p.start = lambda x: x + 1
        with parallel().astuple as fan:
            fan.a = lambda x: x * 2
            fan.b = lambda x: x * 3
        p.end = lambda t: sum(t)
    assert p(1) == 10  # (1 + 1) * 2 + (1 + 1) * 3
    assert p.fan is fan and [n for n, _ in p.entries()] == ["start", "fan", "end"]


def test_something_that_cannot_be_called_is_refused_when_built():
    with pytest.raises(FlowDefinitionError, match=r"stage \[1\] of Pipeline is 3 \(int\)"):
        pipeline(abs, 3)


# -- parallel, diverter, warp -----------------------------------------------------------------------
def test_parallel_gives_every_branch_the_input_and_returns_a_package():
    def h(a, b):
        return f"{a}|{b}"

    assert pipeline(parallel(lambda x: x + 1, lambda x: x * 2), h)(5) == "6|10"
    assert parallel(lambda x: x + 1, lambda x: x * 2)(5) == package(6, 10)
    assert parallel(lambda x: x + 1, lambda x: x * 2).sum(5) == 16
    assert parallel(str.upper, str.lower).sum("Ab") == "ABab"
    assert parallel(a=lambda x: x + 1, b=lambda x: x * 2).asdict(5) == {"a": 6, "b": 10}
    assert pipeline(parallel(lambda x: x, lambda x: -x).astuple, lambda t: t)(1) == (1, -1)
    assert parallel(lambda x: x, lambda x: -x).aslist(1) == [1, -1]
    assert parallel(str.upper, repr).join(",")("a") == "A,'a'"
    with pytest.raises(FlowDefinitionError, match="asdict needs every branch named"):
        parallel(abs, a=abs).asdict


def test_parallel_branches_run_at_once():
    barrier = threading.Barrier(2, timeout=10)
    assert parallel(barrier_stage(barrier, lambda x: x + 1), barrier_stage(barrier, lambda x: x * 2))(3) == package(4, 6)


def test_diverter_gives_one_input_to_each_branch_at_once():
    barrier = threading.Barrier(3, timeout=10)
    d = diverter(barrier_stage(barrier, str.upper), barrier_stage(barrier, len), barrier_stage(barrier, abs))
    assert d("ab", "xyz", -4) == package("AB", 3, 4)
    assert pipeline(lambda: ("a", "bc", -1), d)() == package("A", 2, 1)  # one tuple value is split too
    with pytest.raises(FlowInputError, match="diverter at root has 3 branches but got 2 inputs"):
        d("a", "b")


def test_warp_runs_one_branch_over_every_input_at_once_in_order():
    barrier = threading.Barrier(3, timeout=10)
    assert warp(barrier_stage(barrier, lambda x: x * x))(1, 2, 3) == package(1, 4, 9)
    assert warp(lambda x: x + 1, lambda x: x * 10).sum([1, 2]) == 50  # several stages: one pipeline branch
    with pytest.raises(FlowInputError, match="takes several inputs"):
        warp(abs)(5)
    with pytest.raises(FlowDefinitionError, match="no names"):
        warp(abs).asdict


# -- switch -----------------------------------------------------------------------------------------
def test_switch_routes_by_predicate_or_value_with_a_default():
    s = switch(lambda x: isinstance(x, int), lambda x: x + 1, "hi", str.upper, "default", lambda x: f"other {x}")
    assert [s(1), s("hi"), s("yo")] == [2, "HI", "other yo"]
    by_dict = switch({"a": lambda x: 1, "b": lambda x: 2})
    assert by_dict("b") == 2
    assert switch(1, lambda x: "one", conversion=len)("x") == "one"


def test_switch_without_a_match_or_default_names_the_value_and_the_cases():
    def is_int(x):
        return isinstance(x, int)

    s = pipeline(route=switch(is_int, abs, "a", str.upper))
    with pytest.raises(FlowInputError) as e:
        s("zz")
    assert str(e.value) == ("switch at root.route: no case matches 'zz'; cases: is_int, 'a'; add a 'default' "
                            "branch for the rest")
    with pytest.raises(FlowDefinitionError, match="condition, branch pairs"):
        switch(abs)


# -- bind -------------------------------------------------------------------------------------------
def test_bind_values_placeholders_and_keywords():
    def f(a, b, c=0):
        return (a, b, c)

    assert bind(f, "v", _0)(1) == ("v", 1, 0)
    assert bind(f, _1, _0, c=_0)(1, 2) == (2, 1, 1)
    assert bind(f, c=9)(1, 2) == (1, 2, 9)  # no bound positional argument: the inputs come first
    assert pipeline(lambda: package(1, 2), bind(f, _1, _0))() == (2, 1, 0)
    with pytest.raises(FlowInputError, match="takes input _1, but the stage got 1 input"):
        bind(f, _1, _0)(1)


def test_the_seed_root_reference_with_registered_functions():
    @register("dataproc")
    def gen_data():
        return package("trainset", "evalset")

    @register("validate")
    def val1(in1, in2):
        return in1

    @register("validate")
    def val2(in1, in2):
        return (in1, in2)

    ppl = pipeline(pp1=pipeline(proc=flows.dataproc.gen_data, val1=flows.validate.val1),
                   val2=bind(flows.validate.val2, root.pp1.proc, _0))
    # the bound package arrives as one tuple; _0 is val1's output
    assert ppl() == (("trainset", "evalset"), "trainset")
    assert flows.validate.val2 is val2


def test_with_block_references_to_the_input_and_earlier_stages():
    with pipeline() as p:
        p.a = lambda x: x + 1
        p.b = lambda x: x * 10
        p.c = bind(lambda inp, a, b: (inp, a, b), p.input, p.a, _0)
    assert p(1) == (1, 2, 20)
    with pipeline() as q:  # inside a parallel branch of the pipeline
        q.a = lambda x: x + 1
        with parallel() as q.fan:
            q.fan.x = bind(lambda a, y: a * y, q.a, _0)
            q.fan.y = lambda y: -y
    assert q(1) == package(4, -2)


def test_a_reference_to_a_stage_that_runs_later_or_beside_is_refused_when_built():
    with pytest.raises(FlowDefinitionError, match=r"binds root.later, a stage that runs after it"):
        pipeline(first=bind(abs, root.later), later=abs)
    with pytest.raises(FlowDefinitionError, match=r"binds root.fan.a, a stage that runs beside it"):
        pipeline(fan=parallel(a=abs, b=bind(abs, root.fan.a)))
    with pytest.raises(FlowDefinitionError, match="holds the bind itself"):
        pipeline(outer=pipeline(bind(abs, root.outer)))
    with pytest.raises(FlowDefinitionError, match="inside a warp"):
        pipeline(w=warp(x=pipeline(a=abs)), b=bind(abs, root.w.x.a))
    with pytest.raises(FlowDefinitionError, match="a stage that runs after it"):
        with pipeline() as p:
            p.a = abs
            p.b = bind(abs, _0)
            p.a_again = bind(abs, p.b)  # fine
            p.early = bind(abs, root.late)
            p.late = abs


def test_a_reference_to_no_stage_is_an_error_when_the_flow_is_called():
    p = pipeline(proc=abs, val=bind(abs, root.prc))  # an outer flow might still hold `prc`
    with pytest.raises(FlowDefinitionError, match=r"root.val binds root.prc, which names no stage of this flow; did you "
                                                  r"mean root.proc\? stage paths: root.proc, root.val"):
        p(1)
    assert pipeline(prc=lambda: -1, inner=p)() == 1  # ... as this one does


# -- errors and trees -------------------------------------------------------------------------------
def test_an_exception_in_a_stage_names_its_path_and_keeps_the_original():
    def broken(x):
        raise KeyError("no such row")

    p = pipeline(proc=parallel(branch0=abs, branch1=broken))
    with pytest.raises(StageError) as e:
        p(1)
    assert str(e.value) == "stage root.proc.branch1 raised KeyError: 'no such row'"
    assert isinstance(e.value.__cause__, KeyError) and e.value.path == "root.proc.branch1"
    assert isinstance(e.value, ByzerError)
    with pytest.raises(StageError, match=r"stage root\[1\]\[0\] raised ZeroDivisionError"):
        pipeline(abs, pipeline(lambda x: 1 / 0))(1)


def test_a_flow_prints_as_a_tree():
    def gen_data():
        return 1

    p = pipeline(pp1=pipeline(proc=gen_data, val=parallel(abs, repr).sum), val2=bind(divmod, root.pp1.proc, _0),
                 post_action=print)
    assert repr(p) == """<Flow type=Pipeline>
|- pp1: <Flow type=Pipeline>
|   |- proc: <Function gen_data>
|   └- val: <Flow type=Parallel gather=sum>
|       |- <Function abs>
|       └- <Function repr>
|- val2: <Bind divmod(root.pp1.proc, _0)>
└- post_action: <Function print>"""
    assert repr(switch("a", abs, "default", str.upper)) == ("<Flow type=Switch>\n|- 'a': <Function abs>\n"
                                                           "└- default: <Function str.upper>")


# -- registry ---------------------------------------------------------------------------------------
def test_register_new_group_makes_flows_group_f_the_function_itself():
    register.new_group("textproc")

    @register("textproc")
    def shout(x):
        return x.upper() + "!"

    assert flows.textproc.shout is shout
    assert pipeline(flows.textproc.shout, len)("hey") == 4
    with pytest.raises(FlowDefinitionError, match="no function group 'txtproc'; did you mean 'textproc'"):
        register("txtproc")
    with pytest.raises(FlowDefinitionError, match="cannot name a group"):
        register.new_group("pipeline")

    def other(x):
        return x
    other.__name__ = "shout"
    with pytest.raises(FlowDefinitionError, match="already has 'shout'"):
        register("textproc")(other)
    with pytest.raises(AttributeError, match="registered: shout"):
        flows.textproc.nope


# -- modules ----------------------------------------------------------------------------------------
class MyModule(flows.ModuleBase):  # the seed's example, as written there with byzer_like.flows for lazyllm

    def __init__(self, name, return_trace=True):
        super(__class__, self).__init__(return_trace=return_trace)
        self.name = name

    def _get_train_tasks(self):
        return flows.pipeline(lambda : print(f'Module {self.name} trained!'))

    def _get_deploy_tasks(self):
        return flows.pipeline(lambda : print(f'Module {self.name} deployed!'))

    def forward(self, input):
        return f'[Module {self.name} get input: {input}]'


def test_the_seed_module_example_runs_as_written(capsys):
    m = MyModule('example')
    assert m('hello world') == '[Module example get input: hello world]'
    assert repr(m.update()) == '<Module type=MyModule name=example>'
    assert capsys.readouterr().out == "Module example trained!\nModule example deployed!\n"
    assert repr(m.start()) == '<Module type=MyModule name=example>'
    assert capsys.readouterr().out == "Module example deployed!\n"
    assert m.evalset(['hello', 'world']) is None
    assert m.update().eval_result == ['[Module example get input: hello]', '[Module example get input: world]']
    assert capsys.readouterr().out == "Module example trained!\nModule example deployed!\n"


def two_level_action() -> ActionModule:
    class MyModule2(ModuleBase):
        def __init__(self, name, return_trace=True):
            super(__class__, self).__init__(return_trace=return_trace)
            self.name = name
            self.m1_1 = MyModule(f'{name} m1-1')
            self.m1_2 = MyModule(f'{name} m1-2')

        def _get_deploy_tasks(self):
            return pipeline(lambda: print(f'Module {self.name} deployed!'))

    return ActionModule(MyModule2('m2-1'), MyModule2('m2-2')), MyModule2


def test_submodules_are_attributes_and_the_modules_of_an_action():
    am, MyModule2 = two_level_action()
    m1, m2, m3 = MyModule("m1"), MyModule("m2"), MyModule("m3")
    assert ActionModule(m1, m2).submodules == [m1, m2]
    assert ActionModule(pipeline(m1, parallel(m2, m3))).submodules == [m1, m2, m3]
    assert repr(MyModule2("m2").submodules) == "[<Module type=MyModule name=m2 m1-1>, <Module type=MyModule name=m2 m1-2>]"
    assert repr(am) == """<Module type=Action>
└- <Flow type=Pipeline>
    |- <Module type=MyModule2 name=m2-1>
    |   |- <Module type=MyModule name=m2-1 m1-1>
    |   └- <Module type=MyModule name=m2-1 m1-2>
    └- <Module type=MyModule2 name=m2-2>
        |- <Module type=MyModule name=m2-2 m1-1>
        └- <Module type=MyModule name=m2-2 m1-2>"""


def test_update_trains_every_submodule_then_deploys_children_before_parents(capsys):
    am, _ = two_level_action()
    am.update()
    assert capsys.readouterr().out.splitlines() == [
        "Module m2-1 m1-1 trained!", "Module m2-1 m1-2 trained!", "Module m2-2 m1-1 trained!",
        "Module m2-2 m1-2 trained!",
        "Module m2-1 m1-1 deployed!", "Module m2-1 m1-2 deployed!", "Module m2-1 deployed!",
        "Module m2-2 m1-1 deployed!", "Module m2-2 m1-2 deployed!", "Module m2-2 deployed!"]
    am.start()
    assert len(capsys.readouterr().out.splitlines()) == 6  # start() deploys only
    am.start()
    assert capsys.readouterr().out == ""  # a second start() does nothing


def test_a_module_shared_twice_is_deployed_once_and_flow_start_starts_modules(capsys):
    shared = MyModule("shared")
    am = ActionModule(shared, pipeline(shared, MyModule("other")))
    am.update()
    assert capsys.readouterr().out.count("Module shared deployed!") == 1
    p = pipeline(MyModule("inside"), parallel(MyModule("deep")))
    assert p.start() is p
    assert sorted(capsys.readouterr().out.splitlines()) == ["Module deep deployed!", "Module inside deployed!"]


def test_return_trace_keeps_each_stage_input_and_output_across_threads():
    m = ActionModule(pipeline(inc=lambda x: x + 1, fan=parallel(a=lambda x: x * 2, b=lambda x: -x)), return_trace=True)
    assert m(1) == package(4, -2)
    got = {(t.path, t.input, t.output) for t in m.trace}
    assert got == {("root.inc", 1, 2), ("root.fan.a", 2, 4), ("root.fan.b", 2, -2), ("root.fan", 2, package(4, -2)),
                   ("ActionModule", 1, package(4, -2))}
    assert m.trace[-1].path == "ActionModule"  # the call itself, last
    quiet = ActionModule(abs)
    quiet(-1)
    assert quiet.trace == []


def test_a_task_error_names_the_module_and_a_module_without_forward_says_so():
    class Broken(ModuleBase):
        def _get_train_tasks(self):
            return pipeline(lambda: 1 / 0)

    with pytest.raises(StageError, match=r"stage Broken.train\[0\] raised ZeroDivisionError"):
        Broken().update()
    with pytest.raises(ByzerError, match="defines no forward"):
        Broken()(1)


def test_module_register_as_in_the_seed():
    module_register.new_group('mymodules')

    @module_register('mymodules')
    def m(input):
        return f'module m get input: {input}'

    assert flows.mymodules.m()(1) == 'module m get input: 1'
    m = flows.mymodules.m()
    m.evalset([1, 2, 3])
    assert m.eval().eval_result == ['module m get input: 1', 'module m get input: 2', 'module m get input: 3']
    with pytest.raises(FlowDefinitionError, match="already holds modules"):
        register.new_group('mymodules')


# -- sql and ray stages -----------------------------------------------------------------------------
def test_sql_stage_runs_on_a_session_with_the_input_as_a_table(tmp_path):
    from byzer_like.runtime import Runtime
    from byzer_like.session import Session

    session = Session(Runtime(workspace=tmp_path), progress=False)
    try:
        p = pipeline(lambda n: [{"x": i} for i in range(n)], flows.sql("select sum(x) as s from input as total", session),
                     lambda t: t.column("s")[0].as_py())
        assert p(4) == 6
        flows.set_session(session)
        assert flows.sql("select 41 + 1 as answer as a")().to_pylist() == [{"answer": 42}]
        with pytest.raises(StageError, match=r"root\[0\] raised TypeError: a sql stage takes one table"):
            pipeline(flows.sql("select 1 as one as t"))(5)
    finally:
        flows.set_session(None)
        session.close()


def test_remote_stage_refuses_what_cannot_pickle_and_unknown_options():
    lock = threading.Lock()
    with pytest.raises(flows.UnpicklableStageError, match="cannot be pickled"):
        flows.remote(lambda x: lock, num_cpus=1)
    with pytest.raises(UnknownOptionError, match="num_cpus"):
        flows.remote(abs, num_cpu=1)


@pytest.mark.ray
@pytest.mark.timeout(240)  # the session's Ray head starts first
def test_remote_branches_run_as_ray_tasks(ray_cluster):
    def square(x):
        import os
        return x * x, os.getpid()

    def broken(x):
        raise ValueError("bad row")

    import ray

    # this process not joined yet: both branches arrive at once on their threads, and one of them joins
    ray.shutdown()
    p = parallel(a=flows.remote(square, num_cpus=0.5), b=flows.remote(square, num_cpus=0.5)).asdict
    out = p(3)
    assert out["a"][0] == out["b"][0] == 9
    assert os.getpid() not in (out["a"][1], out["b"][1])  # ran in worker processes
    with pytest.raises(StageError, match="stage root.b raised") as e:
        parallel(a=abs, b=flows.remote(broken, num_cpus=0.5))(1)
    assert isinstance(e.value.__cause__, ValueError)

#!/usr/bin/env python3
"""Build a machine-readable table of timm's registered Vision Transformer architectures.

Parses (with `ast`, never importing timm/torch):
  timm/models/vision_transformer.py, timm/models/deit.py   -> @register_model fns, model_args, builders, default_cfgs
  timm/layers/norm.py                                      -> LayerNorm / RmsNorm default eps
  timm/data/constants.py                                   -> mean/std constants
  timm/version.py                                          -> version

Writes src/weights/timm_vits.json, the table vitrs reads to know what a timm `config.json`'s
`architecture` implies (`model_args` in that file only carries what differs from it): per
name the registered constructor arguments, the default image size and mean/std; and the
VisionTransformer defaults. One model per line, so a new timm release diffs readably.

Usage (from the repository root):
  pip download --no-deps timm==1.0.31 -d /tmp/timm && unzip -q /tmp/timm/timm-*.whl -d /tmp/timm
  python3 tools/timm_vit_registry.py /tmp/timm/timm src/weights/timm_vits.json
"""
import ast
import collections
import json
import operator
import os
import re
import sys

TIMM = sys.argv[1] if len(sys.argv) > 1 else '/tmp/timm/timm'
OUT = sys.argv[2] if len(sys.argv) > 2 else 'src/weights/timm_vits.json'

UNNORMALIZED = collections.Counter()  # (arg, expr) -> count of values kept only as strings


def parse(rel):
    with open(os.path.join(TIMM, rel)) as f:
        return ast.parse(f.read())


def read_version():
    for node in parse('version.py').body:
        if isinstance(node, ast.Assign) and node.targets[0].id == '__version__':
            return node.value.value
    return None


# ---------------------------------------------------------------- constants / arithmetic
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}


def const_eval(node, names=None):
    """Evaluate literals, tuples/lists, unary minus, arithmetic, and known constant names. Raises ValueError."""
    names = names or {}
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return [const_eval(e, names) for e in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = const_eval(node.operand, names)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](const_eval(node.left, names), const_eval(node.right, names))
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'tuple' and len(node.args) == 1:
        return list(const_eval(node.args[0], names))
    raise ValueError(ast.unparse(node))


def read_constants():
    out = {}
    for node in parse('data/constants.py').body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = const_eval(node.value, out)
            except ValueError:
                pass
    return out


def read_norm_eps():
    """Default eps of timm.layers LayerNorm / RmsNorm (torch nn.LayerNorm is 1e-5)."""
    eps = {'nn.LayerNorm': 1e-5}
    for node in parse('layers/norm.py').body:
        if isinstance(node, ast.ClassDef) and node.name in ('LayerNorm', 'RmsNorm', 'LayerNormFp32', 'RmsNormFp32'):
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name == '__init__':
                    a = f.args
                    pos = a.args[len(a.args) - len(a.defaults):]
                    for arg, d in list(zip(pos, a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults)):
                        if arg.arg == 'eps':
                            eps[node.name] = const_eval(d)
    return eps


# ---------------------------------------------------------------- normalizers
NORM_NAMES = {'LayerNorm': 'layernorm', 'nn.LayerNorm': 'layernorm', 'RmsNorm': 'rmsnorm', 'nn.RMSNorm': 'rmsnorm',
              'LayerNormFp32': 'layernorm_fp32', 'RmsNormFp32': 'rmsnorm_fp32'}
NORM_STR = {'layernorm': 'LayerNorm', 'rmsnorm': 'RmsNorm', 'layernormfp32': 'LayerNormFp32', 'rmsnormfp32': 'RmsNormFp32'}
ACT_NAMES = {'nn.GELU': 'gelu', 'GELU': 'gelu', 'GELUTanh': 'gelu_tanh', 'QuickGELU': 'quick_gelu', 'nn.SiLU': 'silu',
             'nn.ReLU': 'relu', 'nn.Tanh': 'tanh', 'nn.Identity': 'identity'}
MLP_NAMES = {'Mlp': 'mlp', 'SwiGLUPacked': 'swiglu_packed', 'SwiGLU': 'swiglu', 'GluMlp': 'glu', 'GlobalResponseNormMlp': 'grn_mlp'}
LAYER_NORM_EPS = {}


def snake(name):
    return re.sub(r'(?<!^)(?=[A-Z])', '_', name.split('.')[-1]).lower()


def norm_spec(node, arg):
    """-> dict(kind=..., eps=...) for a norm layer expression."""
    kw = {}
    if isinstance(node, ast.Call) and ast.unparse(node.func) == 'partial' and node.args:
        for k in node.keywords:
            kw[k.arg] = const_eval(k.value)
        node = node.args[0]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        cls = NORM_STR.get(node.value.replace('_', '').lower())
    else:
        cls = ast.unparse(node)
    if cls not in NORM_NAMES:
        raise ValueError(cls)
    eps = kw.pop('eps', LAYER_NORM_EPS.get(cls))
    out = {'kind': NORM_NAMES[cls], 'eps': eps}
    if kw:
        out['extra'] = kw
    return out


def act_spec(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    s = ast.unparse(node)
    if s in ACT_NAMES:
        return ACT_NAMES[s]
    raise ValueError(s)


def normalize_arg(arg, node, out):
    """Write normalized form(s) of one model_args keyword into out."""
    try:
        if arg in ('norm_layer', 'embed_norm_layer'):
            spec = norm_spec(node, arg)
            prefix = 'norm' if arg == 'norm_layer' else 'embed_norm'
            out[arg] = spec['kind']
            out[prefix + '_eps'] = spec['eps']
            if 'extra' in spec:
                out[prefix + '_extra'] = spec['extra']
            return
        if arg == 'act_layer':
            out['act'] = act_spec(node)
            return
        if arg == 'mlp_layer':
            s = ast.unparse(node)
            if s not in MLP_NAMES:
                raise ValueError(s)
            out['mlp_layer'] = MLP_NAMES[s]
            return
        if arg in ('block_fn', 'embed_layer') and isinstance(node, (ast.Name, ast.Attribute)):
            out[arg] = snake(ast.unparse(node))
            return
        val = const_eval(node)
        out[arg] = val
        if isinstance(node, ast.BinOp):
            out[arg + '_expr'] = ast.unparse(node)
    except ValueError:
        out[arg] = ast.unparse(node)
        UNNORMALIZED[(arg, ast.unparse(node))] += 1


# ---------------------------------------------------------------- VisionTransformer defaults
def vit_init_defaults(tree):
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == 'VisionTransformer':
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name == '__init__':
                    a = f.args
                    pos = a.args[len(a.args) - len(a.defaults):]
                    raw = {}
                    for arg, d in list(zip(pos, a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults)):
                        try:
                            raw[arg.arg] = const_eval(d)
                        except ValueError:
                            raw[arg.arg] = ast.unparse(d)
                    src = ast.unparse(f)
                    return raw, src
    raise RuntimeError('VisionTransformer.__init__ not found')


def normalized_defaults(raw, init_src):
    d = {k: v for k, v in raw.items() if k not in ('device', 'dtype')}
    # norm_layer=None -> `get_norm_layer(norm_layer) or LayerNorm` (timm.layers.LayerNorm)
    assert 'get_norm_layer(norm_layer) or LayerNorm' in init_src
    assert 'get_act_layer(act_layer) or nn.GELU' in init_src
    d['norm_layer'] = 'layernorm'
    d['norm_eps'] = LAYER_NORM_EPS['LayerNorm']
    d['embed_norm_layer'] = None
    d['act'] = 'gelu'  # nn.GELU, exact erf
    d['mlp_layer'] = MLP_NAMES.get(raw['mlp_layer'], raw['mlp_layer'])
    d['block_fn'] = snake(raw['block_fn'])
    d['embed_layer'] = snake(raw['embed_layer'])
    d['attn_layer'] = 'attn' if raw['attn_layer'] == 'Attention' else raw['attn_layer']
    d['_notes'] = {
        'act_layer': 'None -> nn.GELU (exact erf)',
        'norm_layer': 'None -> timm.layers.LayerNorm (eps=%g); timm LayerNorm/RmsNorm default eps 1e-6, torch nn.LayerNorm 1e-5'
                      % LAYER_NORM_EPS['LayerNorm'],
        'fc_norm': 'None -> True iff global_pool == "avg" (then final norm applied after pooling instead of before)',
        'img_size': 'build_model_with_cfg setdefault()s img_size/num_classes/in_chans from the default pretrained cfg '
                    '(fixed_input_size=True), so a name without img_size in model_args gets its default cfg input_size; '
                    'see models[NAME].default_img_size',
        'mlp_layer': 'mlp: fc1(dim->int(dim*mlp_ratio)), act, fc2. swiglu_packed: GluMlp fc1 -> 2*h/2 chunks '
                     '(hidden=int(dim*mlp_ratio), gate_last=False, act overridden by model act). swiglu: fc1_g, fc1_x, '
                     'act(g)*x, norm, fc2',
    }
    return d


# ---------------------------------------------------------------- default_cfgs
def parse_cfg_call(call, base, consts):
    cfg = dict(base)
    for kw in call.keywords:
        if kw.arg is None:
            continue
        try:
            cfg[kw.arg] = const_eval(kw.value, consts)
        except ValueError:
            cfg[kw.arg] = ast.unparse(kw.value)
    return cfg


def cfg_base(tree, consts):
    """Evaluate `def _cfg(url='', **kwargs): return {...}` base dict."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == '_cfg':
            ret = [s for s in node.body if isinstance(s, ast.Return)][0].value
            base = {}
            for k, v in zip(ret.keys, ret.values):
                if k is None:
                    continue
                key = const_eval(k)
                if key == 'url':
                    continue
                try:
                    base[key] = const_eval(v, consts)
                except ValueError:
                    base[key] = ast.unparse(v)
            return base
    raise RuntimeError('_cfg not found')


def read_default_cfgs(tree, consts):
    base = cfg_base(tree, consts)
    raw = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == 'default_cfgs':
            v = node.value
            if isinstance(v, ast.Call) and ast.unparse(v.func) == 'generate_default_cfgs':
                if isinstance(v.args[0], ast.Dict):
                    raw = v.args[0]
            elif isinstance(v, ast.Dict):
                raw = v
    cfgs = collections.OrderedDict()
    for k, v in zip(raw.keys, raw.values):
        cfg = parse_cfg_call(v, base, consts)
        if isinstance(v, ast.Call) and len(v.args) == 1:
            cfg['url'] = const_eval(v.args[0])
        else:
            cfg.setdefault('url', next((const_eval(kw.value) for kw in v.keywords if kw.arg == 'url'), ''))
        cfgs[const_eval(k)] = cfg
    # vision_transformer.py: quickgelu cfg copies generated from `notes` (replicates module-level loop)
    src = ast.unparse(tree)
    if '_quick_gelu_cfgs' in src:
        for n, c in list(cfgs.items()):
            notes = c.get('notes') or ()
            if notes and 'quickgelu' in notes[0]:
                c2 = dict(c)
                if c2.get('hf_hub_id') == 'timm/':
                    c2['hf_hub_id'] = 'timm/' + n
                cfgs[n.replace('_clip_', '_clip_quickgelu_')] = c2
    return cfgs


def default_tag_per_arch(cfgs):
    """Replicates timm._registry.generate_default_cfgs default-tag selection."""
    tags = collections.defaultdict(collections.deque)
    is_pre = collections.defaultdict(bool)
    default_set = set()
    by_tag = collections.defaultdict(dict)
    for k, v in cfgs.items():
        has_weights = bool(v.get('url') or v.get('file') or v.get('hf_hub_id'))
        model, _, tag = k.partition('.')
        priority = (has_weights and not tag) or (tag.endswith('*') and model not in default_set)
        tag = tag.strip('*')
        if priority:
            tags[model].appendleft(tag)
            default_set.add(model)
        elif has_weights and not is_pre[model]:
            tags[model].appendleft(tag)
        else:
            tags[model].append(tag)
        if has_weights:
            is_pre[model] = True
        by_tag[model][tag] = v
    return {m: (t[0], by_tag[m][t[0]], len(t)) for m, t in tags.items()}


# ---------------------------------------------------------------- registered models
def registered_models(tree, fname):
    out = collections.OrderedDict()
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Name) and d.id == 'register_model' for d in node.decorator_list)):
            continue
        model_args, builder, builder_kw, extra = None, None, {}, []
        for s in node.body:
            if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant):
                continue  # docstring
            if isinstance(s, ast.Assign) and ast.unparse(s.targets[0]) == 'model_args':
                model_args = s.value
            elif isinstance(s, ast.Assign) and ast.unparse(s.targets[0]) == 'model':
                call = s.value
                builder = ast.unparse(call.func)
                for kw in call.keywords:
                    if kw.arg in (None, 'pretrained'):
                        continue
                    builder_kw[kw.arg] = const_eval(kw.value)
            elif isinstance(s, ast.Return):
                pass
            else:  # e.g. kwargs.setdefault(...) -- none in 1.0.31 but keep anything unexpected
                extra.append(ast.unparse(s))
        args = collections.OrderedDict()
        if not (isinstance(model_args, ast.Call) and ast.unparse(model_args.func) == 'dict'):
            raise RuntimeError('%s: model_args not a dict(...) literal' % node.name)
        for kw in model_args.keywords:
            normalize_arg(kw.arg, kw.value, args)
        out[node.name] = dict(file=fname, builder=builder, builder_kwargs=builder_kw, args=args, extra_stmts=extra)
    return out


SUFFIX_RE = re.compile(r'_(\d{3})(?:_|$)')


def main():
    global LAYER_NORM_EPS
    LAYER_NORM_EPS = read_norm_eps()
    consts = read_constants()
    vt = parse('models/vision_transformer.py')
    deit = parse('models/deit.py')

    raw_defaults, init_src = vit_init_defaults(vt)
    defaults = normalized_defaults(raw_defaults, init_src)

    cfgs = collections.OrderedDict()
    for t in (vt, deit):
        cfgs.update(default_tag_per_arch(read_default_cfgs(t, consts)))

    models = collections.OrderedDict()
    regs = collections.OrderedDict()
    regs.update(registered_models(vt, 'vision_transformer.py'))
    regs.update(registered_models(deit, 'deit.py'))
    size_mismatch = []
    for name, r in regs.items():
        distilled = bool(r['builder_kwargs'].get('distilled', False))
        entry = collections.OrderedDict()
        entry['file'] = r['file']
        entry['builder'] = r['builder']
        entry['model_class'] = 'VisionTransformerDistilled' if distilled else 'VisionTransformer'
        entry['distilled'] = distilled
        entry['model_args'] = r['args']
        if r['extra_stmts']:
            entry['extra_stmts'] = r['extra_stmts']
        if r['builder_kwargs']:
            entry['builder_kwargs'] = r['builder_kwargs']
        c = cfgs.get(name)
        if c:
            tag, cfg, ntags = c
            pc = collections.OrderedDict()
            pc['tag'] = tag
            pc['num_tags'] = ntags
            for k in ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation', 'num_classes',
                      'fixed_input_size', 'license'):
                if k in cfg:
                    pc[k] = cfg[k]
            entry['default_pretrained_cfg'] = pc
        else:
            entry['default_pretrained_cfg'] = None
        # effective default img_size: model_args > default cfg input_size (fixed_input_size) > __init__ default
        if 'img_size' in r['args']:
            isz, src = r['args']['img_size'], 'model_args'
        elif c and c[1].get('fixed_input_size') and c[1].get('input_size'):
            isz, src = c[1]['input_size'][-2:], 'default_pretrained_cfg'
        else:
            isz, src = raw_defaults['img_size'], 'init_default'
        if isinstance(isz, int):
            isz = [isz, isz]
        entry['default_img_size'] = list(isz)
        entry['img_size_source'] = src
        m = SUFFIX_RE.search(name[name.find('patch'):] if 'patch' in name else name)
        if m and int(m.group(1)) != isz[0]:
            size_mismatch.append((name, int(m.group(1)), isz))
        models[name] = entry

    # What vitrs reads, one model per line.
    keep_defaults = {k: v for k, v in defaults.items() if not k.startswith('_')}
    lines = []
    for name, e in models.items():
        pc = e['default_pretrained_cfg'] or {}
        row = collections.OrderedDict()
        row['args'] = {k: v for k, v in e['model_args'].items() if k != 'mlp_ratio_expr'}
        row['img_size'] = e['default_img_size'][0]
        if 'mean' in pc:
            row['mean'], row['std'] = pc['mean'], pc['std']
        if e['distilled']:
            row['distilled'] = True
        lines.append('  %s: %s' % (json.dumps(name), json.dumps(row, separators=(',', ':'))))
    with open(OUT, 'w') as f:
        f.write('{"timm_version": %s,\n"defaults": %s,\n"models": {\n%s\n}}\n' % (
            json.dumps(read_version()), json.dumps(keep_defaults, separators=(',', ':')),
            ',\n'.join(lines)))
    print('wrote %s: %d models' % (OUT, len(models)))
    print('unnormalized:', dict(UNNORMALIZED))


if __name__ == '__main__':
    main()

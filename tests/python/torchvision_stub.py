# A torchvision stand-in for machines with torch but without torchvision: timm imports it at
# start-up, and the ViT models these checks build use none of it.
import sys, types, importlib.abc, importlib.machinery
class _Any(types.ModuleType):
    __path__ = []
    def __getattr__(self, name):
        if name.startswith('__'): raise AttributeError(name)
        if name == 'InterpolationMode':
            import enum
            return enum.Enum('InterpolationMode', 'NEAREST BILINEAR BICUBIC BOX HAMMING LANCZOS NEAREST_EXACT')
        return type(name, (object,), {'__init__': lambda self, *a, **k: None})
class _F(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == 'torchvision' or name.startswith('torchvision.'):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec): return _Any(spec.name)
    def exec_module(self, m): m.__version__ = '0.0'
sys.meta_path.insert(0, _F())

"""The CNI protocol layer (standard library only): requests, results, versions, errors, delegation."""

from cnipy.cni.errors import CniError
from cnipy.cni.request import Attachment, NetConf, Request
from cnipy.cni.types import DNS, Interface, IPConfig, Result, Route

__all__ = ["DNS", "Attachment", "CniError", "IPConfig", "Interface", "NetConf", "Request", "Result", "Route"]

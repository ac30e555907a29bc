"""Model -> OnApp field dict, one function per resource, fields in the order OnApp documents them.

Values stay Python values (datetimes included); ``formats`` turns them into JSON or typed XML.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmbackup.db.models import (
    AutobackupPreset,
    Backup,
    BackupServer,
    BackupServerJoin,
    BackupServerZone,
    DataStore,
    Disk,
    Hypervisor,
    HypervisorZone,
    ImageTemplate,
    IpAddress,
    Schedule,
    ScheduleLog,
    Transaction,
    User,
    VirtualMachine,
)
from vmbackup.services import space

Fields = dict[str, Any]

# The spec page's field list (alphabetical as OnApp renders it, disk_id last), plus 6.2+'s `compatible`.
BACKUP_FIELDS = (
    "allow_resize_without_reboot",
    "allowed_hot_migrate",
    "allowed_swap",
    "backup_server_id",
    "backup_size",
    "built",
    "built_at",
    "compatible",
    "created_at",
    "data_store_type",
    "id",
    "identifier",
    "image_type",
    "initiated",
    "iqn",
    "locked",
    "marked_for_delete",
    "min_disk_size",
    "min_memory_size",
    "note",
    "operating_system",
    "operating_system_distro",
    "target_id",
    "target_type",
    "template_id",
    "updated_at",
    "user_id",
    "volume_id",
    "backup_type",
    "disk_id",
)


def backup(b: Backup | Mapping[str, Any]) -> Fields:
    """From a model or from a listing's plain row (column name -> value)."""
    row = b if isinstance(b, Mapping) else {name: getattr(b, name, None) for name in (*BACKUP_FIELDS, *_EXTRA)}
    out = {name: row.get(name) for name in BACKUP_FIELDS}
    out["compatible"] = True
    # Not OnApp fields (clients ignore unknown keys): what the periodic integrity check last found.
    for name in _EXTRA:
        out[name] = row.get(name)
    return out


_EXTRA = ("integrity", "verified_at")


def user(u: User, used_backup_kb: int = 0) -> Fields:
    """OnApp's user, with the backup space sold to it: ``backup_space_limit`` (GB, null: no limit),
    ``used_backup_space`` (GB its backups take, two decimals) and ``backup_space_available`` (GB left, null with no
    limit), like OnApp's ``disk_space_available``."""
    used_gb = space.gb(used_backup_kb)
    limit = u.backup_space_limit
    return {
        "id": u.id,
        "login": u.login,
        "email": u.email,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "status": u.status,
        "identifier": u.identifier,
        "time_zone": u.time_zone,
        "locale": "en",
        "roles": [{"role": {"id": 1 if u.is_admin else 2, "label": u.role, "identifier": u.role}}],
        "api_key_set": u.api_key_hash is not None,
        "backup_space_limit": limit,
        "used_backup_space": used_gb,
        "backup_space_available": None if limit is None else max(0.0, round(limit - used_gb, 2)),
        "created_at": u.created_at,
        "updated_at": u.updated_at,
    }


def template(t: ImageTemplate) -> Fields:
    return {
        "id": t.id,
        "label": t.label,
        "identifier": t.identifier,
        "file_name": t.file_name,
        "state": t.state,
        "version": t.version,
        "operating_system": t.operating_system,
        "operating_system_distro": t.operating_system_distro,
        "operating_system_arch": t.operating_system_arch,
        "min_disk_size": t.min_disk_size,
        "min_memory_size": t.min_memory_size,
        "template_size": t.template_size,
        "checksum": t.checksum,
        "allowed_swap": t.allowed_swap,
        "allowed_hot_migrate": t.allowed_hot_migrate,
        "allow_resize_without_reboot": t.allow_resize_without_reboot,
        "user_id": t.user_id,
        "backup_server_id": t.backup_server_id,
        "type": "ImageTemplate",
        "virtualization": ["xen", "kvm"],
        "created_at": t.created_at,
        "updated_at": t.updated_at,
    }


def data_store(d: DataStore) -> Fields:
    return {
        "id": d.id,
        "label": d.label,
        "identifier": d.identifier,
        "data_store_type": d.data_store_type,
        "enabled": d.enabled,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    }


def backup_server(s: BackupServer, cpu_idle: int | None = None) -> Fields:
    """OnApp's fields (reference 5.5) and vmbackup's ``storage_path`` (only admins see backup servers).
    ``cpu_idle`` is what the server's live workers report (services/placement.cpu_idle); None when none does."""
    return {
        "id": s.id,
        "label": s.label,
        "ip_address": s.ip_address,
        "backup_ip_address": s.backup_ip_address,
        "capacity": s.capacity,
        "enabled": s.enabled,
        "distro": None,
        "cpu_idle": cpu_idle,
        "backup_server_group_id": s.backup_server_group_id,
        "integrated_storage": False,
        "storage_path": s.storage_path,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def virtual_machine(vm: VirtualMachine) -> Fields:
    """Every field of reference sections 5.3 and 10, typed as OnApp sends them (libcloud's driver reads
    ``ip_addresses`` unconditionally, so it is always there, ``[]`` when none)."""
    t = vm.template
    return {
        "id": vm.id,
        "identifier": vm.identifier,
        "label": vm.label,
        "hostname": vm.hostname,
        "user_id": vm.user_id,
        "template_id": vm.template_id,
        "template_label": t.label,
        "operating_system": t.operating_system,
        "operating_system_distro": t.operating_system_distro,
        "built": vm.built,
        "booted": vm.booted,
        "locked": vm.locked,
        "suspended": vm.suspended,
        "state": vm.state,
        "recovery_mode": vm.recovery_mode,
        "memory": vm.memory,
        "cpus": vm.cpus,
        "cpu_shares": vm.cpu_shares,
        "total_disk_size": sum(d.disk_size for d in vm.disks),
        "min_disk_size": t.min_disk_size,
        "hypervisor_id": vm.hypervisor_id,
        "hypervisor_type": vm.hypervisor.hypervisor_type if vm.hypervisor is not None else None,
        "storage_server_type": vm.storage_server_type,
        "allowed_swap": t.allowed_swap,
        "allowed_hot_migrate": t.allowed_hot_migrate,
        "allow_resize_without_reboot": t.allow_resize_without_reboot,
        "support_incremental_backups": True,
        "deleted_at": None,
        "ip_addresses": [{"ip_address": ip_address(ip, vm)} for ip in vm.ip_addresses],
        "created_at": vm.created_at,
        "updated_at": vm.updated_at,
    }


def vm_status(vm: VirtualMachine) -> Fields:
    """``GET /virtual_machines/:id/status``: the few fields integrations poll (reference section 10)."""
    return {
        "id": vm.id,
        "identifier": vm.identifier,
        "hostname": vm.hostname,
        "template_id": vm.template_id,
        "built": vm.built,
        "locked": vm.locked,
        "booted": vm.booted,
        "operating_system": vm.template.operating_system,
        "suspended": vm.suspended,
        "enable_autoscale": False,
        "state": vm.state,
    }


def ip_address(ip: IpAddress, vm: VirtualMachine) -> Fields:
    # OnApp shows an address with the hypervisor and owner of the VM it is assigned to.
    return {
        "id": ip.id,
        "address": ip.address,
        "broadcast": ip.broadcast,
        "gateway": ip.gateway,
        "network_address": ip.network_address,
        "prefix": ip.prefix,
        "ipv4": ip.ipv4,
        "hypervisor_id": vm.hypervisor_id,
        "ip_net_id": ip.ip_net_id,
        "ip_range_id": ip.ip_range_id,
        "network_id": ip.network_id,
        "user_id": vm.user_id,
        "created_at": ip.created_at,
        "updated_at": ip.updated_at,
    }


def hypervisor(h: Hypervisor, online: bool) -> Fields:
    return {
        "id": h.id,
        "label": h.label,
        "identifier": h.identifier,
        "ip_address": h.ip_address,
        "hypervisor_type": h.hypervisor_type,
        "enabled": h.enabled,
        "online": online,
        "hypervisor_group_id": h.hypervisor_group_id,
        "created_at": h.created_at,
        "updated_at": h.updated_at,
    }


def _zone(z: HypervisorZone | BackupServerZone) -> Fields:
    """What OnApp's zones of either kind share (``hypervisor_group`` and ``backup_server_group``)."""
    return {
        "id": z.id,
        "label": z.label,
        "identifier": z.identifier,
        "location_group_id": z.location_group_id,
        "closed": z.closed,
        "server_type": z.server_type,
    }


def hypervisor_zone(z: HypervisorZone) -> Fields:
    return {**_zone(z), "created_at": z.created_at, "updated_at": z.updated_at}


def backup_server_join(j: BackupServerJoin) -> Fields:
    return {
        "id": j.id,
        "backup_server_id": j.backup_server_id,
        "target_join_id": j.target_join_id,
        "target_join_type": j.target_join_type,
        "created_at": j.created_at,
        "updated_at": j.updated_at,
    }


def disk(d: Disk, *, admin: bool) -> Fields:
    out: Fields = {
        "id": d.id,
        "identifier": d.identifier,
        "label": d.label,
        "disk_size": d.disk_size,
        "primary": d.primary,
        "is_swap": d.is_swap,
        "data_store_id": d.data_store_id,
        "virtual_machine_id": d.virtual_machine_id,
        "built": d.built,
        "locked": d.locked,
        "has_autobackups": d.has_autobackups,
        "mount_point": d.mount_point,
        "file_system": d.file_system,
        "iqn": None,
        "volume_id": None,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    }
    if admin:  # where the bytes live is the provider's business, not the VM owner's
        out["image_path"] = d.image_path
    return out


def log_for(t: Transaction, admin: bool) -> str:
    """The transaction's log as ``admin`` may read it: admins get back what the log hides from the VM's owner."""
    text = t.log_output
    if admin:
        for shown, secret in (t.log_secrets or {}).items():
            text = text.replace(shown, secret)
    return text


def transaction(t: Transaction, *, log: bool, admin: bool = False) -> Fields:
    out: Fields = {
        "action": t.action,
        "actor": None,
        "allowed_cancel": t.allowed_cancel,
        "associated_object_id": t.associated_object_id,
        "associated_object_type": t.associated_object_type,
        "created_at": t.created_at,
        "dependent_transaction_id": None,
        "id": t.id,
        "identifier": t.identifier,
        "params": t.params,
        "parent_id": t.parent_id,
        "parent_type": t.parent_type,
        "pid": t.pid,
        "priority": t.priority,
        "scheduled": t.scheduled,
        "start_after": t.start_after,
        "started_at": t.started_at,
        "status": t.status,
        "updated_at": t.updated_at,
        "user_id": t.user_id,
    }
    if log:
        out["log_output"] = log_for(t, admin)
    return out


def preset(p: AutobackupPreset) -> Fields:
    return {
        "id": p.id,
        "period": p.period,
        "duration": p.duration,
        "rotation_period": p.rotation_period,
        "enabled": p.enabled,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }


def schedule_log(entry: ScheduleLog) -> Fields:
    return {
        "id": entry.id,
        "schedule_id": entry.schedule_id,
        "status": entry.status,
        "transaction_id": entry.transaction_id,
        "log_output": entry.log_output,
        "created_at": entry.created_at,
        "updated_at": entry.updated_at,
    }


def schedule(s: Schedule) -> Fields:
    return {
        "id": s.id,
        "action": s.action,
        "target_id": s.target_id,
        "target_type": s.target_type,
        "duration": s.duration,
        "period": s.period,
        "rotation_period": s.rotation_period,
        "start_at": s.start_at,
        "status": s.status,
        "failure_count": s.failure_count,
        "params": s.params or {},
        "user_id": s.user_id,
        "disk_id": s.target_id if s.target_type == "Disk" else None,
        "virtual_machine_id": s.target_id if s.target_type == "VirtualMachine" else None,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def backup_server_zone(z: BackupServerZone) -> Fields:
    return {
        **_zone(z),
        "federation_id": None,
        "federation_enabled": False,
        "traded": False,
        "created_at": z.created_at,
        "updated_at": z.updated_at,
    }

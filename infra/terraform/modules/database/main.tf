# PostgreSQL for Hodei: the one stateful dependency. Queues are tables read with
# `FOR UPDATE SKIP LOCKED`, so the database sees many short transactions that update
# and delete a few hot rows; the parameter group below is tuned for that.

locals {
  identifier = "${var.name}-db"

  # Every replica opens up to `connections_per_replica` connections (its
  # database_max_connections), and all of them may be up at once, so the server must
  # accept replicas x pool size, plus headroom for `hodei migrate`, admin commands, psql,
  # reporting queries and the connections RDS reserves for itself (rdsadmin,
  # superuser_reserved_connections). A replica refused a connection fails its /readyz
  # and is taken out of the load balancer, so running short is an outage, not a slowdown.
  max_connections = var.api_max_replicas * var.connections_per_replica + var.connection_headroom

  parameter_family = "postgres${split(".", var.engine_version)[0]}"

  tags = merge(var.tags, {
    "hodei:deployment" = var.name
  })
}

resource "aws_db_subnet_group" "this" {
  name        = local.identifier
  description = "Private subnets of the Hodei database ${var.name}"
  subnet_ids  = var.subnet_ids
  tags        = local.tags
}

resource "aws_security_group" "this" {
  name        = "${local.identifier}-postgres"
  description = "Hodei database ${var.name}: PostgreSQL from the control plane only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "from_control_plane" {
  security_group_id            = aws_security_group.this.id
  description                  = "PostgreSQL from the Hodei control plane"
  referenced_security_group_id = var.client_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  tags                         = local.tags
}

resource "aws_db_parameter_group" "this" {
  name_prefix = "${local.identifier}-${local.parameter_family}-"
  family      = local.parameter_family
  description = "Hodei ${var.name}: a SKIP LOCKED queue (many short updates and deletes)"
  tags        = local.tags

  # Sized from the replicas' pools (see locals). Static: applied at the next reboot.
  parameter {
    name         = "max_connections"
    value        = tostring(local.max_connections)
    apply_method = "pending-reboot"
  }

  # Autovacuum. Every dispatch updates a job row and deletes or updates a queue row, so
  # the hot tables (jobs, the queue entries, workers, worker_jobs, leases, events) turn
  # over their live rows many times a minute while staying small. With the default 20 %
  # scale factor a small hot table is vacuumed rarely, its dead tuples pile up, and every
  # SKIP LOCKED scan has to step over them: dequeue latency grows with the garbage, not
  # with the backlog. Vacuum these tables early and often, and let it run fast.

  # Vacuum once 1 % of a table (plus 50 rows) is dead, instead of 20 %.
  parameter {
    name  = "autovacuum_vacuum_scale_factor"
    value = "0.01"
  }

  parameter {
    name  = "autovacuum_vacuum_threshold"
    value = "50"
  }

  # Keep planner statistics fresh: queue depth swings quickly.
  parameter {
    name  = "autovacuum_analyze_scale_factor"
    value = "0.02"
  }

  # Append-mostly tables (events, logs) get vacuumed for their visibility map too.
  parameter {
    name  = "autovacuum_vacuum_insert_scale_factor"
    value = "0.05"
  }

  # Look for work every 10 s instead of every minute.
  parameter {
    name  = "autovacuum_naptime"
    value = "10"
  }

  # Let a vacuum do ten times the default I/O before it sleeps, and sleep 2 ms: on gp3
  # it finishes a hot table in seconds instead of falling behind the churn.
  parameter {
    name  = "autovacuum_vacuum_cost_limit"
    value = "2000"
  }

  parameter {
    name  = "autovacuum_vacuum_cost_delay"
    value = "2"
  }

  # More hot tables than the default three workers can keep up with. Static.
  parameter {
    name         = "autovacuum_max_workers"
    value        = "6"
    apply_method = "pending-reboot"
  }

  # Say in the log when a vacuum takes over a second: the first sign of falling behind.
  parameter {
    name  = "log_autovacuum_min_duration"
    value = "1000"
  }

  # A transaction left open holds back the xmin horizon, so no vacuum anywhere can
  # remove the dead queue rows behind it. Hodei's transactions are short; a session idle
  # in a transaction for five minutes is a bug or a forgotten psql, and is ended.
  parameter {
    name  = "idle_in_transaction_session_timeout"
    value = "300000"
  }

  # Lock waits on the queue tables mean something holds rows that SKIP LOCKED should
  # have skipped: log them (after deadlock_timeout, 1 s).
  parameter {
    name  = "log_lock_waits"
    value = "1"
  }

  # Query logging: slow statements and every schema change.
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  # gp3 is SSD: random reads cost about what sequential ones do, so index scans on the
  # queue's ordering indexes are preferred.
  parameter {
    name  = "random_page_cost"
    value = "1.1"
  }

  parameter {
    name  = "track_io_timing"
    value = "1"
  }

  # rds.force_ssl stays 0 for now: Hodei's database driver is built without TLS, so it
  # cannot connect to a server that requires it. The traffic stays inside the VPC,
  # between the control plane's security group and this one.
  parameter {
    name  = "rds.force_ssl"
    value = "0"
  }

  lifecycle {
    create_before_destroy = true
  }
}

data "aws_iam_policy_document" "monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "monitoring" {
  count = var.monitoring_interval_seconds > 0 ? 1 : 0

  name               = "${local.identifier}-monitoring"
  description        = "Enhanced Monitoring of the Hodei database ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.monitoring_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "monitoring" {
  count = var.monitoring_interval_seconds > 0 ? 1 : 0

  role       = aws_iam_role.monitoring[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

data "aws_partition" "current" {}

# Created here rather than by RDS so that they expire and are encrypted.
resource "aws_cloudwatch_log_group" "this" {
  for_each = toset(["postgresql", "upgrade"])

  name              = "/aws/rds/instance/${local.identifier}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = local.tags
}

resource "aws_db_instance" "this" {
  #checkov:skip=CKV2_AWS_69: Hodei's database driver (sqlx) is built without TLS, so rds.force_ssl must stay 0 for now; the traffic stays in the VPC between the control plane's security group and this one
  identifier     = local.identifier
  engine         = "postgres"
  engine_version = var.engine_version
  instance_class = var.instance_class

  allocated_storage     = var.allocated_storage_gb
  max_allocated_storage = var.max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = var.kms_key_arn

  db_name  = var.database_name
  username = var.master_username
  password = var.master_password
  port     = 5432

  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.this.id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.this.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  multi_az                   = var.multi_az
  backup_retention_period    = var.backup_retention_days
  backup_window              = "03:00-04:00"
  maintenance_window         = "sun:04:30-sun:05:30"
  copy_tags_to_snapshot      = true
  deletion_protection        = var.deletion_protection
  skip_final_snapshot        = false
  final_snapshot_identifier  = "${local.identifier}-final"
  auto_minor_version_upgrade = true
  apply_immediately          = false

  iam_database_authentication_enabled = true

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = var.kms_key_arn
  performance_insights_retention_period = var.performance_insights_retention_days

  monitoring_interval = var.monitoring_interval_seconds
  monitoring_role_arn = var.monitoring_interval_seconds > 0 ? aws_iam_role.monitoring[0].arn : null

  enabled_cloudwatch_logs_exports = ["postgresql", "upgrade"]

  tags = local.tags

  depends_on = [aws_cloudwatch_log_group.this]
}

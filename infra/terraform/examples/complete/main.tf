# A complete Hodei deployment on AWS: PostgreSQL on RDS, API replicas behind an HTTPS
# load balancer, the control plane's least-privilege role, and worker pools. It takes
# an existing VPC.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  parameter_path = "/hodei/${var.name}/control-plane"
  listen_port    = 8080

  # config.yaml, without secrets: they reach the replicas as HODEI_* variables from their
  # own SSM parameters.
  config = merge({
    listen                   = "0.0.0.0:${local.listen_port}"
    database_max_connections = var.database_max_connections
    log_format               = "json"
    pools                    = [for id in sort(keys(module.worker_pool)) : module.worker_pool[id].pool_config]
  }, var.extra_config)
}

# Secrets: letters and digits only, so they need no escaping in a URL or an environment
# file. They are in the Terraform state: keep the state in an encrypted, access-controlled
# backend.
resource "random_password" "database" {
  length  = 32
  special = false
}

resource "random_password" "registration_token" {
  length  = 48
  special = false
}

resource "random_password" "admin_key" {
  length  = 48
  special = false
}

# One key for the deployment's SecureString parameters, the database's storage and
# Performance Insights, and its CloudWatch log groups.
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109: a key policy's Resource "*" is this key alone, and only the account (through IAM) and CloudWatch Logs (for this account's log groups) are granted
  #checkov:skip=CKV_AWS_111: a key policy's Resource "*" is this key alone, and only the account (through IAM) and CloudWatch Logs (for this account's log groups) are granted
  #checkov:skip=CKV_AWS_356: a key policy's Resource "*" is this key alone: key policies cannot name other resources
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsEncrypts"

    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "hodei" {
  description             = "Hodei ${var.name}: parameters, database, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "hodei" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.hodei.key_id
}

module "worker_pool" {
  source   = "../../modules/worker_pool"
  for_each = var.worker_pools

  name                = var.name
  pool                = each.key
  kind                = each.value.kind
  api_url             = module.control_plane.api_url
  registration_token  = random_password.registration_token.result
  kms_key_arn         = aws_kms_key.hodei.arn
  worker_args         = each.value.worker_args
  vpc_id              = var.vpc_id
  subnet_ids          = var.private_subnet_ids
  instance_types      = each.value.instance_types
  capacity_type       = each.value.capacity_type
  min_size            = each.value.min_size
  max_size            = each.value.max_size
  root_volume_size_gb = each.value.root_volume_size_gb

  pool_settings = {
    template = {
      slots  = each.value.slots
      labels = each.value.labels
    }
  }
}

module "iam" {
  source = "../../modules/iam"

  name               = var.name
  worker_role_arns   = [for id in sort(keys(module.worker_pool)) : module.worker_pool[id].role_arn]
  ssm_parameter_path = local.parameter_path
  kms_key_arn        = aws_kms_key.hodei.arn
}

module "database" {
  source = "../../modules/database"

  name                     = var.name
  vpc_id                   = var.vpc_id
  subnet_ids               = var.private_subnet_ids
  client_security_group_id = module.control_plane.security_group_id
  kms_key_arn              = aws_kms_key.hodei.arn
  instance_class           = var.db_instance_class
  allocated_storage_gb     = var.db_allocated_storage_gb
  multi_az                 = var.db_multi_az
  deletion_protection      = var.db_deletion_protection
  master_password          = random_password.database.result
  api_max_replicas         = var.api_max_size
  connections_per_replica  = var.database_max_connections
}

module "control_plane" {
  source = "../../modules/control_plane"

  name                              = var.name
  vpc_id                            = var.vpc_id
  public_subnet_ids                 = var.public_subnet_ids
  private_subnet_ids                = var.private_subnet_ids
  domain_name                       = var.domain_name
  certificate_arn                   = var.certificate_arn
  route53_zone_id                   = var.route53_zone_id
  load_balancer_deletion_protection = var.db_deletion_protection
  instance_type                     = var.api_instance_type
  min_size                          = var.api_min_size
  max_size                          = var.api_max_size
  desired_capacity                  = var.api_desired_capacity
  instance_profile_name             = module.iam.instance_profile_name
  listen_port                       = local.listen_port
  database_security_group_id        = module.database.security_group_id
  kms_key_arn                       = aws_kms_key.hodei.arn
  ssm_parameter_path                = local.parameter_path
  config_yaml                       = yamlencode(local.config)
  database_url                      = module.database.database_url
  worker_registration_token         = random_password.registration_token.result
  bootstrap_admin_key               = random_password.admin_key.result
  hodei_download_url                = var.hodei_download_url
  hodei_sha256                      = var.hodei_sha256
}
